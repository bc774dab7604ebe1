/* Scanning a pharmacy's e-medication notebook QR codes (JAHIS) with the
   camera, on /medications/<id>/import/.

   getUserMedia gives the video; each frame is drawn on a canvas and given
   to jsQR (static/vendor/jsqr, loaded before this file). A QR code's bytes
   are decoded as UTF-8 when they are valid UTF-8, else as Shift_JIS (as
   pharmacies write them) — the same rule as the server. A document split
   over several QR codes ends every part with a 911 record
   (911,<data id>,<parts>,<number>): parts are collected here, in any
   order, until all are read; the text is then put in the form's text area
   and the form submitted, like pasted text. "Import the QR codes read so
   far" submits what is there: the server keeps incomplete parts until the
   rest arrive. No inline script or style: the Content-Security-Policy
   allows neither. */
(function () {
  "use strict";

  function init() {
    var section = document.querySelector("[data-scanner]");
    var form = document.getElementById("medication-import-form");
    if (!section || !form) return;
    var startButton = document.getElementById("scan-start");
    var stopButton = document.getElementById("scan-stop");
    var sendButton = document.getElementById("scan-send");
    var video = document.getElementById("scan-video");
    var canvas = document.getElementById("scan-canvas");
    var status = document.getElementById("scan-status");
    var list = document.getElementById("scan-parts");
    var textArea = form.querySelector("textarea");
    var via = form.querySelector("input[name=via]");
    var stream = null;
    var parts = {}; // data id -> {total, texts: {seq: text}}
    var singles = [];
    var seen = {};
    var running = false;

    function message(name, values) {
      var text = section.getAttribute("data-msg-" + name) || "";
      Object.keys(values || {}).forEach(function (key) {
        text = text.replace("{" + key + "}", String(values[key]));
      });
      status.textContent = text;
    }

    function decodeBytes(bytes) {
      var data = new Uint8Array(bytes);
      if (data.length >= 3 && data[0] === 0xef && data[1] === 0xbb && data[2] === 0xbf) {
        data = data.subarray(3);
      }
      try {
        return new TextDecoder("utf-8", { fatal: true }).decode(data);
      } catch (e) {
        return new TextDecoder("shift_jis").decode(data);
      }
    }

    function splitInfo(text) {
      var lines = text.replace(/\r\n?/g, "\n").split("\n").filter(function (l) {
        return l.trim() !== "";
      });
      if (!lines.length || !/^JAHISTC\d\d/i.test(lines[0].trim())) return undefined;
      var last = lines[lines.length - 1].split(",");
      if (last[0].trim() !== "911" || last.length < 4) return null;
      var total = parseInt(last[2], 10);
      var seq = parseInt(last[3], 10);
      if (!(total >= 1 && seq >= 1 && seq <= total)) return null;
      return { id: last[1].trim(), total: total, seq: seq };
    }

    function collected() {
      var texts = singles.slice();
      Object.keys(parts).forEach(function (id) {
        var doc = parts[id];
        Object.keys(doc.texts)
          .map(Number)
          .sort(function (a, b) { return a - b; })
          .forEach(function (seq) { texts.push(doc.texts[seq]); });
      });
      return texts.join("\r\n");
    }

    function complete() {
      return Object.keys(parts).every(function (id) {
        return Object.keys(parts[id].texts).length >= parts[id].total;
      });
    }

    function submit() {
      stop();
      textArea.value = collected();
      if (via) via.value = "scan";
      form.submit();
    }

    function showPart(info) {
      var item = document.createElement("li");
      item.textContent = info ? info.id + " — " + info.seq + " / " + info.total : "QR";
      list.appendChild(item);
      sendButton.hidden = false;
    }

    function found(bytes) {
      var text = decodeBytes(bytes);
      if (seen[text]) return;
      seen[text] = true;
      var info = splitInfo(text);
      if (info === undefined) {
        message("unreadable");
        return;
      }
      if (info === null) {
        singles.push(text);
        showPart(null);
        if (!Object.keys(parts).length) {
          message("single");
          submit();
        }
        return;
      }
      var doc = parts[info.id] || (parts[info.id] = { total: info.total, texts: {} });
      doc.texts[info.seq] = text;
      showPart(info);
      if (complete()) {
        message("done");
        submit();
      } else {
        message("part", { seq: Object.keys(doc.texts).length, total: doc.total });
      }
    }

    function tick() {
      if (!running) return;
      if (video.readyState >= 2 && video.videoWidth) {
        canvas.width = video.videoWidth;
        canvas.height = video.videoHeight;
        var context = canvas.getContext("2d", { willReadFrequently: true });
        context.drawImage(video, 0, 0, canvas.width, canvas.height);
        var image = context.getImageData(0, 0, canvas.width, canvas.height);
        var code = window.jsQR(image.data, image.width, image.height, {
          inversionAttempts: "dontInvert"
        });
        if (code && code.binaryData && code.binaryData.length) {
          found(code.binaryData);
        }
      }
      window.requestAnimationFrame(tick);
    }

    function stop() {
      running = false;
      if (stream) {
        stream.getTracks().forEach(function (track) { track.stop(); });
        stream = null;
      }
      video.hidden = true;
      stopButton.hidden = true;
      startButton.hidden = false;
    }

    startButton.addEventListener("click", function () {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.jsQR) {
        message("unsupported");
        return;
      }
      navigator.mediaDevices
        .getUserMedia({ video: { facingMode: "environment" }, audio: false })
        .then(function (media) {
          stream = media;
          video.srcObject = media;
          video.hidden = false;
          startButton.hidden = true;
          stopButton.hidden = false;
          running = true;
          message("start");
          return video.play();
        })
        .then(function () { window.requestAnimationFrame(tick); })
        .catch(function () {
          stop();
          message("denied");
        });
    });
    stopButton.addEventListener("click", stop);
    sendButton.addEventListener("click", submit);
    // For tests and for devices without a camera: the same path as a scan.
    section.addEventListener("medication-scan:bytes", function (event) {
      found(event.detail);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
