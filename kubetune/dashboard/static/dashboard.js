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

  var form = document.getElementById("new-job");
  if (form) {
    var pending = null;
    var check = function () {
      fetch("/new/check", { method: "POST", body: new URLSearchParams(new FormData(form)) })
        .then(function (r) { return r.json(); })
        .then(function (result) {
          document.getElementById("yaml").textContent = result.yaml;
          var errors = {};
          result.problems.forEach(function (p) {
            (errors[p.field] = errors[p.field] || []).push(p.path + ": " + p.message);
          });
          form.querySelectorAll(".error").forEach(function (span) {
            span.textContent = (errors[span.dataset.for] || []).join("; ");
          });
          form.dataset.checked = String(result.problems.length);  // tests wait on it
        });
    };
    form.addEventListener("input", function () { clearTimeout(pending); pending = setTimeout(check, 250); });
    form.addEventListener("change", check);
    document.querySelector("button.copy-yaml").addEventListener("click", function (event) {
      navigator.clipboard.writeText(document.getElementById("yaml").textContent)
        .then(function () { event.target.textContent = "copied"; });
    });
  }
})();
