// mechscope single-figure page (e.g. `mechscope dream`): draws DATA.figure into #graph and marks
// the body ready (data-graph-ready="1") once Plotly has laid it out.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("mechscope-data").textContent);
  var div = document.getElementById("graph");
  Plotly.newPlot(div, DATA.figure.data, DATA.figure.layout, { responsive: true }).then(function () {
    document.body.setAttribute("data-graph-ready", "1");
  }, function (err) {
    document.getElementById("message").textContent = "the figure could not be drawn: " + err;
  });
})();
