// Quick entry: the fetal movement timer (胎動カウント). Start when counting
// begins, stop at the 10th movement: the minutes go into the field (which
// can always be typed instead). No inline script: the page's CSP allows none.
document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll("[data-vt-timer-for]")) {
    const input = document.getElementById(box.dataset.vtTimerFor);
    const start = box.querySelector("[data-vt-timer-start]");
    const stop = box.querySelector("[data-vt-timer-stop]");
    const clock = box.querySelector(".vt-timer-clock");
    if (!input || !start || !stop || !clock) continue;
    box.hidden = false;
    let began = null;
    let ticker = null;
    const show = (ms) => {
      const s = Math.floor(ms / 1000);
      clock.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    };
    start.addEventListener("click", () => {
      began = Date.now();
      show(0);
      ticker = setInterval(() => show(Date.now() - began), 1000);
      start.disabled = true;
      stop.disabled = false;
    });
    stop.addEventListener("click", () => {
      if (began === null) return;
      clearInterval(ticker);
      const ms = Date.now() - began;
      show(ms);
      input.value = String(Math.max(1, Math.round(ms / 60000)));
      began = null;
      start.disabled = false;
      stop.disabled = true;
      input.focus();
    });
  }
});
