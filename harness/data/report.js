// Progressive enhancement only: every fact is in the HTML without this script.
// Sortable tables (click a column heading), filters for the tests table, copy buttons.
(function () {
  "use strict";
  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) { return ""; }
    var key = cell.getAttribute("data-sort");
    return key !== null ? key : cell.textContent.trim();
  }
  var NUMBER = /^\s*-?\d+(\.\d+)?\s*$/;
  function compare(a, b) {
    if (NUMBER.test(a) && NUMBER.test(b)) { return parseFloat(a) - parseFloat(b); }
    return a.localeCompare(b);
  }
  function makeSortable(table) {
    var head = table.tHead;
    if (!head || !table.tBodies.length) { return; }
    Array.prototype.forEach.call(head.rows[0].cells, function (th, index) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      while (th.firstChild) { button.appendChild(th.firstChild); }
      th.appendChild(button);
      button.addEventListener("click", function () {
        var descending = th.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(head.rows[0].cells, function (other) {
          other.removeAttribute("aria-sort");
        });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var c = compare(cellValue(r1, index), cellValue(r2, index));
          return descending ? -c : c;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }
  function makeFilter(form) {
    var table = document.getElementById(form.getAttribute("data-table"));
    if (!table) { return; }
    var text = form.querySelector("input[type=search]");
    var status = form.querySelector("select");
    var count = form.querySelector(".count");
    function apply() {
      var needle = (text.value || "").toLowerCase();
      var want = status.value;
      var shown = 0, rows = table.tBodies[0].rows;
      Array.prototype.forEach.call(rows, function (row) {
        var ok = (!needle || row.textContent.toLowerCase().indexOf(needle) >= 0) &&
                 (!want || row.getAttribute("data-status") === want ||
                  (want === "problem" && row.getAttribute("data-problem") === "1"));
        row.classList.toggle("hidden", !ok);
        if (ok) { shown += 1; }
      });
      count.textContent = shown + " of " + rows.length + " shown";
    }
    text.addEventListener("input", apply);
    status.addEventListener("change", apply);
    form.hidden = false;
    apply();
  }
  function addCopy(pre) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "copy";
    button.addEventListener("click", function () {
      var textValue = pre.textContent;
      function selectIt() {
        var range = document.createRange();
        range.selectNodeContents(pre);
        var sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
      }
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(textValue).then(function () {
          button.textContent = "copied";
        }, selectIt);
      } else {
        selectIt();
      }
    });
    pre.parentNode.insertBefore(button, pre);
  }
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  document.querySelectorAll("form.filters").forEach(makeFilter);
  document.querySelectorAll("pre.repro").forEach(addCopy);
  document.documentElement.setAttribute("data-script", "on");
}());
