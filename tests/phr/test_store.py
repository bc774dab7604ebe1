"""The record store (phr.store): idempotent upserts, versions and history,
tombstones, purge, and what concurrent and failing writers leave behind.

Each test names the rule it pins (ARCHITECTURE.md, "The record store").
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import DataError, connections, transaction
from hypothesis import given
from hypothesis import strategies as st

from phr import indexing, store, terminology
from phr.models import Provenance, Resource, ResourceHistory
from phr.store import Source, StoreError

ROWS = "urn:hagukumi:municipality:102016:infant-checkup"
MOTHER = uuid.UUID("11111111-1111-4111-8111-111111111111")
CHILD = uuid.UUID("22222222-2222-4222-8222-222222222222")


@pytest.fixture
def provenance(db: None) -> Provenance:
    return Provenance.objects.create(origin=Provenance.Origin.MUNICIPALITY, source="test")


def weight(kg: float, *, patient: uuid.UUID = MOTHER, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": terminology.LOINC, "code": "29463-7"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2025-04-01",
        "valueQuantity": {"value": kg, "unit": "kg", "system": terminology.UCUM, "code": "kg"},
    }
    resource.update(extra)
    return resource


def versions(resource_id: uuid.UUID) -> list[int]:
    return list(
        ResourceHistory.objects.filter(resource_id=resource_id)
        .order_by("version")
        .values_list("version", flat=True)
    )


def race(workers: list[Callable[[], object]]) -> list[object]:
    """Run the workers in threads, each on its own database connection,
    released together by a barrier; return their results (re-raising the
    first error)."""
    barrier = threading.Barrier(len(workers))
    results: list[object] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(n: int, work: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=30)
            results[n] = work()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(n, w)) for n, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    if errors:
        raise errors[0]
    return results


# --- idempotent upsert --------------------------------------------------------------


def test_it_writes_the_same_source_twice_as_one_record_at_version_one(
    provenance: Provenance,
) -> None:
    # Idempotent writes: the same source identifier lands on the same record,
    # and the same content makes no new version.
    first = store.record_write(weight(61.5), provenance=provenance, source=Source(ROWS, "r1"))
    second = store.record_write(weight(61.5), provenance=provenance, source=Source(ROWS, "r1"))

    assert first == (first[0], 1, True)
    assert second == (first[0], 1, False)
    assert Resource.objects.count() == 1
    assert versions(first[0]) == [1]


def test_it_writes_a_new_version_when_the_content_changes(provenance: Provenance) -> None:
    # Nothing is overwritten: the old version stays in history.
    rid, _, _ = store.record_write(weight(61.5), provenance=provenance, source=Source(ROWS, "r1"))
    again = store.record_write(weight(62.0), provenance=provenance, source=Source(ROWS, "r1"))

    assert again == (rid, 2, True)
    row = Resource.objects.get(id=rid)
    assert (row.version, row.content["valueQuantity"]["value"]) == (2, 62.0)
    old, new = ResourceHistory.objects.filter(resource_id=rid).order_by("version")
    assert (old.version, old.content["valueQuantity"]["value"]) == (1, 61.5)
    assert (new.version, new.content_hash) == (2, row.content_hash)
    # lastUpdated moves forward with the versions, also within one transaction.
    assert new.last_updated > old.last_updated


def test_it_ignores_key_order_at_any_depth(provenance: Provenance) -> None:
    # The canonical content decides "changed": key order does not count,
    # neither at the top nor nested.
    resource = weight(61.5)
    reordered = dict(reversed(list(resource.items())))
    reordered["valueQuantity"] = dict(reversed(list(resource["valueQuantity"].items())))
    reordered["code"] = {"coding": [dict(reversed(list(resource["code"]["coding"][0].items())))]}
    assert list(reordered) != list(resource)

    rid, _, _ = store.record_write(resource, provenance=provenance, source=Source(ROWS, "r1"))
    result = store.records_write_bulk([(reordered, Source(ROWS, "r1"))], provenance=provenance)

    assert result.unchanged == [rid]
    assert versions(rid) == [1]


def test_it_ignores_the_server_owned_id_and_meta_fields(provenance: Provenance) -> None:
    # id, meta.versionId and meta.lastUpdated are the store's, not content:
    # a client echoing them back changes nothing, and they are not stored.
    rid, _, _ = store.record_write(weight(61.5), provenance=provenance, source=Source(ROWS, "r1"))
    server_meta = {"versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z"}
    echoed = weight(61.5, id=str(rid), meta=server_meta)

    assert store.record_write(echoed, provenance=provenance, source=Source(ROWS, "r1"))[1:] == (
        1,
        False,
    )
    assert "id" not in Resource.objects.get(id=rid).content
    assert "meta" not in Resource.objects.get(id=rid).content


# Small JSON-like trees: what a resource's elements can hold.
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=10,
)


def _reorder(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {key: _reorder(value[key], rnd) for key in keys}
    if isinstance(value, list):
        return [_reorder(item, rnd) for item in value]  # array order is meaning
    return value


@given(extension=st.dictionaries(st.text(min_size=1, max_size=3), _json, max_size=4),
       rnd=st.randoms(use_true_random=False))
def test_it_hashes_the_same_content_in_any_key_order(
    extension: dict[str, Any], rnd: random.Random
) -> None:
    # Property behind idempotent replays: the hash sees content, not key order.
    resource = weight(61.5, extension=[{"url": "urn:x", "x": extension}])
    shuffled = _reorder(resource, rnd)
    source = Source(ROWS, "r1")
    assert store.stage(resource, source=source).content_hash == (
        store.stage(shuffled, source=source).content_hash
    )


# --- concurrent writers -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_keeps_one_record_when_single_writers_race_on_one_source_key(
    provenance: Provenance,
) -> None:
    # Idempotent also under races: writers of one key end with one record
    # and a history of contiguous versions, none lost, none doubled.
    source = Source(ROWS, "raced")
    writers = [
        (lambda kg=kg: store.record_write(weight(kg), provenance=provenance, source=source))
        for kg in (60.0, 61.0, 62.0, 63.0)
    ]
    results = race(writers)

    row = Resource.objects.get()
    assert versions(row.id) == [1, 2, 3, 4]
    assert row.version == 4
    assert sorted(result[1] for result in results) == [1, 2, 3, 4]  # type: ignore[index]


@pytest.mark.django_db(transaction=True)
def test_it_writes_one_version_when_racing_writers_send_the_same_content(
    provenance: Provenance,
) -> None:
    source = Source(ROWS, "raced")
    results = race(
        [lambda: store.record_write(weight(60.0), provenance=provenance, source=source)] * 4
    )
    row = Resource.objects.get()
    assert versions(row.id) == [1]
    assert sorted(result[2] for result in results) == [False, False, False, True]  # type: ignore[index]


@pytest.mark.django_db(transaction=True)
def test_it_keeps_one_record_per_key_when_bulk_writers_race(provenance: Provenance) -> None:
    # The bulk path's fast lane (COPY of ids that did not exist) meets a
    # concurrent writer of the same ids as a unique violation and falls back
    # to the upsert: still one record per key and contiguous versions.
    keys = [Source(ROWS, f"row-{n}") for n in range(40)]

    def writer(kg: float, seed: int) -> Callable[[], store.WriteResult]:
        batch = [(weight(kg), key) for key in keys]
        random.Random(seed).shuffle(batch)
        return lambda: store.records_write_bulk(batch, provenance=provenance)

    race([writer(60.0, 1), writer(61.0, 2), writer(62.0, 3)])

    assert Resource.objects.count() == len(keys)
    for row in Resource.objects.all():
        assert versions(row.id) == [1, 2, 3]
        assert row.version == 3
    assert ResourceHistory.objects.count() == 3 * len(keys)


@pytest.mark.django_db(transaction=True)
def test_it_keeps_one_version_when_bulk_writers_race_with_the_same_content(
    provenance: Provenance,
) -> None:
    keys = [Source(ROWS, f"row-{n}") for n in range(40)]
    batch = [(weight(60.0), key) for key in keys]
    results = race([lambda: store.records_write_bulk(batch, provenance=provenance)] * 3)

    assert Resource.objects.count() == len(keys)
    assert ResourceHistory.objects.count() == len(keys)
    created = [len(result.created) for result in results]  # type: ignore[attr-defined]
    assert sorted(created) == [0, 0, len(keys)]


# --- bulk specifics -----------------------------------------------------------------


def test_it_lets_the_last_of_two_writes_of_one_key_in_a_batch_win(
    provenance: Provenance,
) -> None:
    # One statement may not touch a row twice: within a chunk the last wins.
    source = Source(ROWS, "twice")
    result = store.records_write_bulk(
        [(weight(60.0), source), (weight(61.0), source)], provenance=provenance
    )
    row = Resource.objects.get()
    assert result.created == [row.id]
    assert (row.version, row.content["valueQuantity"]["value"]) == (1, 61.0)

    # Across chunks, each chunk writes its version; the last still wins.
    store.records_write_bulk(
        [(weight(62.0), source), (weight(63.0), source)], provenance=provenance, chunk_size=1
    )
    row.refresh_from_db()
    assert (row.version, row.content["valueQuantity"]["value"]) == (3, 63.0)
    assert versions(row.id) == [1, 2, 3]


def test_it_replays_a_batch_without_writing_anything(provenance: Provenance) -> None:
    # Replaying an import (a task run twice) is a no-op: 0 created, 0 updated.
    batch = [(weight(60.0 + n), Source(ROWS, f"row-{n}")) for n in range(10)]
    first = store.records_write_bulk(batch, provenance=provenance, chunk_size=4)
    again = store.records_write_bulk(batch, provenance=provenance, chunk_size=4)

    assert (len(first.created), first.written) == (10, 10)
    assert (again.written, len(again.unchanged)) == (0, 10)
    assert ResourceHistory.objects.count() == 10

    # One changed row in a replayed batch makes exactly one new version.
    batch[3] = (weight(99.0), Source(ROWS, "row-3"))
    mixed = store.records_write_bulk(batch, provenance=provenance)
    assert (len(mixed.updated), len(mixed.unchanged)) == (1, 9)
    assert mixed.versions == {mixed.updated[0]: 2}


@pytest.mark.parametrize("path", ["single", "bulk-new", "bulk-changed"])
def test_it_stores_awkward_text_exactly(provenance: Provenance, path: str) -> None:
    # Whatever a source sends (tabs, newlines, quotes, backslashes, Japanese)
    # comes back unchanged, in the JSON and in the search columns, on every
    # write path (VALUES, COPY of new rows, COPY + upsert of changed rows).
    awkward = 'a\tb\n"c"\\d\r{e},f 母子'
    resource = weight(
        61.5,
        identifier=[{"system": "urn:x", "value": awkward}],
        note=[{"text": awkward}],
        performer=[{"reference": f"Organization/{awkward}"}],
    )
    source = Source(ROWS + awkward, awkward)
    if path == "single":
        rid, _, _ = store.record_write(resource, provenance=provenance, source=source)
    else:
        if path == "bulk-changed":
            store.record_write(weight(1.0), provenance=provenance, source=source)
        result = store.records_write_bulk([(resource, source)], provenance=provenance)
        rid = next(iter(result.versions))

    row = Resource.objects.get(id=rid)
    expected = indexing.index(store.canonical_content(resource), resource_id=rid)
    assert row.content == store.canonical_content(resource)
    assert (row.source_system, row.source_value) == (source.system, source.value)
    assert row.tokens == expected.tokens
    assert row.refs == expected.refs
    assert f"urn:x|{awkward}" in row.tokens
    assert row.content_hash == store.content_hash(store.canonical_content(resource))


# --- tombstones ----------------------------------------------------------------------


def test_it_deletes_with_a_tombstone_version(provenance: Provenance) -> None:
    # A delete is a tombstone: a new version marked deleted, in history too.
    rid, _, _ = store.record_write(weight(61.5), provenance=provenance, source=Source(ROWS, "r1"))

    version = store.record_delete(
        resource_type="Observation", resource_id=rid, provenance=provenance
    )

    assert version == 2
    row = Resource.objects.get(id=rid)
    assert (row.version, row.deleted) == (2, True)
    tombstone = ResourceHistory.objects.get(resource_id=rid, version=2)
    assert tombstone.deleted is True
    # Deleting twice changes nothing.
    assert (
        store.record_delete(resource_type="Observation", resource_id=rid, provenance=provenance)
        is None
    )
    assert versions(rid) == [1, 2]


def test_it_does_not_delete_through_the_wrong_type(provenance: Provenance) -> None:
    rid, _, _ = store.record_write(weight(61.5), provenance=provenance, source=Source(ROWS, "r1"))
    assert (
        store.record_delete(resource_type="Patient", resource_id=rid, provenance=provenance)
        is None
    )
    assert Resource.objects.get(id=rid).deleted is False


def test_it_revives_a_deleted_record_as_a_new_version(provenance: Provenance) -> None:
    # Writing a deleted record's source again, even with the same content,
    # brings it back as the next version.
    source = Source(ROWS, "r1")
    rid, _, _ = store.record_write(weight(61.5), provenance=provenance, source=source)
    store.record_delete(resource_type="Observation", resource_id=rid, provenance=provenance)

    assert store.record_write(weight(61.5), provenance=provenance, source=source) == (rid, 3, True)
    row = Resource.objects.get(id=rid)
    assert (row.version, row.deleted) == (3, False)
    assert versions(rid) == [1, 2, 3]
    assert ResourceHistory.objects.get(resource_id=rid, version=3).deleted is False

    # The bulk path revives too.
    store.record_delete(resource_type="Observation", resource_id=rid, provenance=provenance)
    result = store.records_write_bulk([(weight(61.5), source)], provenance=provenance)
    assert result.updated == [rid]
    assert versions(rid) == [1, 2, 3, 4, 5]


# --- purge ----------------------------------------------------------------------------


def test_it_purges_a_patients_compartment_with_its_history(provenance: Provenance) -> None:
    # A purge is the one exception to "nothing is overwritten": the
    # patient's records and all their versions go; other patients' stay.
    def write_family(patient: uuid.UUID) -> list[uuid.UUID]:
        ids = [
            store.record_write(
                {"resourceType": "Patient", "birthDate": "2025-01-31"},
                provenance=provenance,
                resource_id=patient,
            )[0]
        ]
        for n in range(3):
            source = Source(ROWS, f"{patient}-{n}")
            ids.append(
                store.record_write(weight(3.0, patient=patient), provenance=provenance,
                                   source=source)[0]
            )
            store.record_write(weight(3.5, patient=patient), provenance=provenance, source=source)
        store.record_delete(resource_type="Observation", resource_id=ids[-1], provenance=provenance)
        return ids

    child_ids = write_family(CHILD)
    mother_ids = write_family(MOTHER)
    mother_history = ResourceHistory.objects.filter(resource_id__in=mother_ids).count()

    assert store.records_purge(patient_id=CHILD) == 4

    assert not Resource.objects.filter(id__in=child_ids).exists()
    assert not ResourceHistory.objects.filter(resource_id__in=child_ids).exists()
    assert Resource.objects.filter(id__in=mother_ids).count() == 4
    assert ResourceHistory.objects.filter(resource_id__in=mother_ids).count() == mother_history
    assert store.records_purge(patient_id=CHILD) == 0


# --- failures leave nothing behind ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_leaves_nothing_when_a_later_chunk_has_a_bad_resource(provenance: Provenance) -> None:
    # A bulk call is one transaction: chunk 1 was written when chunk 2
    # failed, and it is rolled back with it.
    batch = [(weight(60.0 + n), Source(ROWS, f"row-{n}")) for n in range(3)]
    batch.append(({"resourceType": "Bundle"}, Source(ROWS, "bad")))

    with pytest.raises(StoreError, match="unsupported resource type"):
        store.records_write_bulk(batch, provenance=provenance, chunk_size=2)

    assert not Resource.objects.exists()
    assert not ResourceHistory.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_leaves_nothing_when_staging_fails_half_way(
    provenance: Provenance, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_stage = store.stage
    calls = 0

    def failing_stage(resource: dict[str, Any], **kwargs: Any) -> store.Staged:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("mapper crashed")
        return real_stage(resource, **kwargs)

    monkeypatch.setattr(store, "stage", failing_stage)
    batch = [(weight(60.0 + n), Source(ROWS, f"row-{n}")) for n in range(6)]

    with pytest.raises(RuntimeError, match="mapper crashed"):
        store.records_write_bulk(batch, provenance=provenance, chunk_size=2)

    assert not Resource.objects.exists()
    assert not ResourceHistory.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_leaves_nothing_when_the_database_refuses_a_later_chunk(
    provenance: Provenance,
) -> None:
    # The database's own refusal (jsonb takes no NUL character; the FHIR
    # boundary refuses it first, this store call bypasses the boundary) in
    # the second chunk rolls the first back too, and so does the caller's
    # transaction around several writes.
    refused = weight(1.0)
    refused["code"]["text"] = "nul\u0000here"
    batch = [(weight(60.0 + n), Source(ROWS, f"row-{n}")) for n in range(3)]
    batch.append((refused, Source(ROWS, "bad")))

    with pytest.raises(DataError):
        store.records_write_bulk(batch, provenance=provenance, chunk_size=2)
    assert not Resource.objects.exists()

    def job() -> None:
        with transaction.atomic():
            store.record_write(weight(1.0), provenance=provenance, source=Source(ROWS, "single"))
            store.records_write_bulk(batch, provenance=provenance, chunk_size=2)

    with pytest.raises(DataError):
        job()
    assert not Resource.objects.exists()
    assert not ResourceHistory.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_surfaces_an_indexing_error_from_inside_the_copy_stream(
    provenance: Provenance, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bulk path indexes rows while COPY streams them; an error there
    # must reach the caller as itself (not as a bare "COPY failed") and
    # leave nothing behind.
    class IndexerBroke(Exception):
        pass

    real_index = indexing.index

    def index(resource: dict[str, Any], **kwargs: Any) -> indexing.IndexFields:
        if resource.get("valueQuantity", {}).get("value") == 13.0:
            raise IndexerBroke
        return real_index(resource, **kwargs)

    monkeypatch.setattr(indexing, "index", index)
    batch = [(weight(10.0 + n), Source(ROWS, f"row-{n}")) for n in range(5)]

    with pytest.raises(IndexerBroke):
        store.records_write_bulk(batch, provenance=provenance, chunk_size=2)
    assert not Resource.objects.exists()


def test_it_writes_what_a_mapper_yielded_even_if_it_reuses_its_dicts(
    provenance: Provenance,
) -> None:
    # A mapper may reuse one dict for every row it yields: each row is
    # written as it was when yielded (the store snapshots the JSON).
    def mapper() -> Any:
        resource = weight(0.0)
        for n in range(4):
            resource["valueQuantity"]["value"] = 50.0 + n
            yield resource, Source(ROWS, f"row-{n}")

    store.records_write_bulk(mapper(), provenance=provenance)

    rows = Resource.objects.order_by("source_value")
    assert [row.content["valueQuantity"]["value"] for row in rows] == [50.0, 51.0, 52.0, 53.0]
    assert [row.quantity_value for row in rows] == [50, 51, 52, 53]


# --- types -------------------------------------------------------------------------------


def test_it_refuses_to_change_the_type_of_an_id(provenance: Provenance) -> None:
    # An id belongs to one type for good: an Observation may not overwrite a Patient.
    store.record_write({"resourceType": "Patient"}, provenance=provenance, resource_id=CHILD)

    with pytest.raises(StoreError, match="is a Patient"):
        store.record_write(weight(3.0), provenance=provenance, resource_id=CHILD)
    with pytest.raises(StoreError, match="is a Patient"):
        store.records_write_bulk([(weight(3.0, id=str(CHILD)), None)], provenance=provenance)

    row = Resource.objects.get(id=CHILD)
    assert (row.resource_type, row.version) == ("Patient", 1)
    assert versions(CHILD) == [1]


def test_it_refuses_an_unsupported_type_and_a_non_uuid_id(provenance: Provenance) -> None:
    with pytest.raises(StoreError, match="unsupported"):
        store.record_write({"resourceType": "Bundle"}, provenance=provenance)
    with pytest.raises(StoreError, match="not a UUID"):
        store.record_write({"resourceType": "Patient", "id": "pat-1"}, provenance=provenance)
    assert not Resource.objects.exists()

