"""The board's style sheet and table-sorting script, written inline into every page.

Inline, with no CDN and no fetch: a page opened from disk (``file://``) or copied elsewhere shows and sorts the
same, with no network. The script is plain ES2015 with no dependencies.
"""

from __future__ import annotations

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em; color: #1b1b1b; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.2em; margin: 1.6em 0 .4em; }
a { color: #0b57a4; } nav { margin-bottom: 1em; font-size: .95em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
thead th { background: #f1f3f5; position: sticky; top: 0; }
th.sortable button { all: unset; cursor: pointer; display: block; width: 100%; }
th.sortable button::after { content: " \\2195"; color: #999; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; color: #1b1b1b; }
th[aria-sort="descending"] button::after { content: " \\25BC"; color: #1b1b1b; }
tr.reported td { background: #fafaf3; font-style: italic; }
.flag { color: #a40b0b; font-weight: bold; } .muted { color: #666; } .err { color: #a40b0b; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .9em; }
figure { margin: 1em 0; } figure img { max-width: min(100%, 900px); height: auto; border: 1px solid #ddd; }
.legend { font-size: .9em; color: #444; max-width: 70em; }
"""

#: Sorts a ``table.sortable``: a click on a header's button orders the body's rows by that column's ``data-sort``
#: values (numbers when the header says ``data-type="number"``, else text), ascending first, then descending; cells
#: without a value go last either way. The header's ``aria-sort`` says the order, for screen readers and tests.
SCRIPT = """
(function () {
  "use strict";
  function key(row, column, numeric) {
    var cell = row.cells[column];
    var raw = cell ? cell.getAttribute("data-sort") : null;
    if (raw === null || raw === "") { return null; }
    if (!numeric) { return raw.toLowerCase(); }
    var value = parseFloat(raw);
    return isNaN(value) ? null : value;
  }
  function sortBy(table, header) {
    var column = header.cellIndex;
    var numeric = header.getAttribute("data-type") === "number";
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, i) { row.setAttribute("data-position", String(i)); });
    rows.sort(function (a, b) {
      var x = key(a, column, numeric), y = key(b, column, numeric);
      if (x === null || y === null) {
        if (x === y) { return a.getAttribute("data-position") - b.getAttribute("data-position"); }
        return x === null ? 1 : -1;
      }
      var order = x < y ? -1 : (x > y ? 1 : a.getAttribute("data-position") - b.getAttribute("data-position"));
      return ascending || x === y ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th.sortable button").forEach(function (button) {
      button.addEventListener("click", function () { sortBy(table, button.parentNode); });
    });
  });
})();
"""
