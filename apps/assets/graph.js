// mechscope graph viewer: draws the embedded Plotly figure; clicking a linked node opens its page.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("mechscope-data").textContent);
  var div = document.getElementById("graph");

  // one line from the graph's typed metadata (GraphMeta); text only, never markup
  function summaryText(s) {
    if (!s) return "";
    var parts = [s.method || "graph"];
    if (s.model) parts.push("model " + s.model);
    if (s.n_layers !== null && s.n_layers !== undefined) parts.push(s.n_layers + " layers");
    parts.push(s.n_prompts + (s.n_prompts === 1 ? " prompt" : " prompts"));
    parts.push(s.nodes + " nodes, " + s.edges + " edges");
    if (s.units) parts.push("weights in " + s.units);
    if (typeof s.faithfulness === "number") parts.push("faithfulness " + s.faithfulness.toFixed(3));
    if (typeof s.completeness === "number") parts.push("completeness " + s.completeness.toFixed(3));
    return parts.join(" · ");
  }
  document.getElementById("summary").textContent = summaryText(DATA.summary);

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
