// kubetune dashboard: refresh the jobs table every 5 s without reloading the page, and copy buttons.
(function () {
  "use strict";
  var rows = document.getElementById("job-rows");
  if (rows) {
    setInterval(function () {
      fetch(rows.dataset.refresh, { cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) { rows.innerHTML = html; })  // server-rendered and escaped there
        .catch(function () {});
    }, 5000);
  }
  document.querySelectorAll("form.filters select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var text = button.parentElement.querySelector("code").textContent;
      navigator.clipboard.writeText(text).then(function () { button.textContent = "copied"; });
    });
  });
})();
