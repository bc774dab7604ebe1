// The handbook's print button (the page allows no inline script).
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("[data-handbook-print]")) {
    button.addEventListener("click", () => window.print());
  }
});
