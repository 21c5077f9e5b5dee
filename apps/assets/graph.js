// mechscope graph viewer: draws the embedded Plotly figure; clicking a linked node opens its page.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("mechscope-data").textContent);
  var div = document.getElementById("graph");
  Plotly.newPlot(div, DATA.figure.data, DATA.figure.layout, { responsive: true }).then(function () {
    div.on("plotly_click", function (ev) {
      var url = ev.points && ev.points.length ? ev.points[0].customdata : null;
      if (typeof url !== "string" || !url) return;
      if (/^\s*(javascript|data|vbscript):/i.test(url)) {  // links come from labels we do not trust
        document.getElementById("message").textContent = "refused to open a script link";
        return;
      }
      window.location.href = url;
    });
    document.body.setAttribute("data-graph-ready", "1");
  });
})();
