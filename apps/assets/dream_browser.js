// mechscope feature browser, dreams (mechscope features --dream): on the page of a feature that was
// dreamed, the EPO frontier (activation vs cross-entropy, the dataset's max activation marked) and
// the best fluent prompts, tokens shaded like the top contexts, beside the dataset's contexts.
// Self-contained: it watches the page's #feature[data-feature] (set by browser.js after each
// render) and loads dreams/dream_NNNNN.js lazily. Model text reaches the DOM through textContent
// only; Plotly labels go through ptext.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("mechscope-data").textContent);
  var D = DATA.dreams, IX = DATA.index;
  if (!D || !D.features.length) return;
  var NONCE = document.querySelector('meta[name="mechscope-nonce"]').content;
  var dreamed = {}, loaded = {}, waiting = {};
  D.features.forEach(function (i) { dreamed[i] = true; });

  function byId(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function ptext(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  // the page's one rule for showing a token (assets/tokens.js), as the top contexts use it
  var visibleToken = window.mechscopeVisible;
  function fmt(x) { return Math.abs(x) >= 1e-3 || x === 0 ? x.toFixed(3) : x.toExponential(2); }

  var style = el("style");
  style.textContent =
    "#f-dream .dream-row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }" +
    "#f-dream-plot { flex: 1 1 420px; min-width: 320px; height: 320px; }" +
    "#f-dream-prompts { flex: 1 1 420px; min-width: 320px; }" +
    "#f-dream .dream-prompt .num { color: #666; margin-right: 0.6em; font-family: system-ui, sans-serif; }";
  document.head.appendChild(style);

  // the section lives beside the dataset's contexts: after the top contexts of a live feature,
  // after the "never fired" note of a dead one (a feature rare on the text may still be dreamed)
  var section = el("div", "hidden");
  section.id = "f-dream";
  section.appendChild(el("h3", null, "Dreamed prompts (EPO: most active fluent prompts)"));
  var note = el("p", "meta");
  note.id = "f-dream-meta";
  section.appendChild(note);
  var row = el("div", "dream-row"), plotBox = el("div"), prompts = el("div");
  plotBox.id = "f-dream-plot";
  prompts.id = "f-dream-prompts";
  row.appendChild(plotBox);
  row.appendChild(prompts);
  section.appendChild(row);

  function place(dead) {
    var anchor = dead ? byId("f-dead") : byId("f-top");
    if (anchor && anchor.nextSibling !== section) anchor.parentNode.insertBefore(section, anchor.nextSibling);
  }

  window.mechscopeDream = function (i, result) {
    loaded[i] = result;
    (waiting[i] || []).forEach(function (f) { f(result); });
    delete waiting[i];
  };
  function load(i, done) {
    if (loaded[i]) return done(loaded[i]);
    if (waiting[i]) return waiting[i].push(done);
    waiting[i] = [done];
    var s = document.createElement("script");
    s.nonce = NONCE;
    s.src = D.dir + "/dream_" + String(i).padStart(5, "0") + ".js";
    s.onerror = function () { note.textContent = "could not load " + s.src; };
    document.head.appendChild(s);
  }

  function hover(m) {
    return ptext(JSON.stringify(m.text)) + "<br>activation " + fmt(m.activation) + "<br>cross-entropy " +
      m.cross_entropy.toFixed(3) + (m.lam === null || m.lam === undefined ? "" : "<br>\u03bb = " + fmt(m.lam));
  }
  function drawFrontier(i, r) {
    var fr = r.frontier, chosen = r.members, dataMax = IX.max_activation[i];
    var traces = [
      { type: "scatter", mode: "lines+markers", name: "frontier", x: fr.map(function (m) { return m.cross_entropy; }),
        y: fr.map(function (m) { return m.activation; }), line: { shape: "hv", color: "#8e44ad" },
        marker: { size: 7 }, text: fr.map(hover), hoverinfo: "text" },
      { type: "scatter", mode: "markers", name: "best for each \u03bb",
        x: chosen.map(function (m) { return m.cross_entropy; }), y: chosen.map(function (m) { return m.activation; }),
        marker: { size: 13, symbol: "circle-open", color: "#e67e22", line: { width: 2 } },
        text: chosen.map(hover), hoverinfo: "text" }];
    var layout = { margin: { l: 55, r: 10, t: 30, b: 45 }, hovermode: "closest", showlegend: true,
      legend: { orientation: "h", y: -0.25 },
      xaxis: { title: { text: "cross-entropy of the prompt (nats/token)" } },
      yaxis: { title: { text: "activation" }, rangemode: "tozero" }, shapes: [], annotations: [] };
    if (IX.density[i] > 0) {  // the dataset's max activation, for comparison
      layout.shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: dataMax, y1: dataMax,
                           line: { dash: "dot", color: "#7f8c8d" } });
      layout.annotations.push({ xref: "paper", x: 1, xanchor: "right", y: dataMax, yanchor: "bottom",
                                text: ptext("dataset max " + fmt(dataMax)), showarrow: false,
                                font: { size: 11, color: "#555" } });
    }
    return Plotly.react(plotBox, traces, layout, { responsive: true, displaylogo: false });
  }
  function promptRow(m, scale) {
    var div = el("div", "ctx dream-prompt");
    div.setAttribute("data-text", m.text);
    div.title = JSON.stringify(m.text);
    div.appendChild(el("span", "num", "act " + fmt(m.activation) + " \u00b7 CE " + m.cross_entropy.toFixed(2)));
    m.str_tokens.forEach(function (t, j) {
      var a = m.per_token[j], span = el("span", "tok", visibleToken(t));
      var alpha = scale > 0 && a !== null ? Math.max(0, Math.min(1, a / scale)) : 0;
      span.style.backgroundColor = "rgba(255, 120, 0, " + alpha.toFixed(3) + ")";
      span.title = JSON.stringify(t) + " \u00b7 id " + m.tokens[j] + ": " + (a === null ? "" : fmt(a));
      span.setAttribute("data-act", a);
      div.appendChild(span);
    });
    return div;
  }
  function render(i, r) {
    var seen = {}, best = [];
    r.members.slice().sort(function (a, b) { return b.activation - a.activation; }).forEach(function (m) {
      var key = m.tokens.join(",");
      if (!seen[key]) { seen[key] = true; best.push(m); }
    });
    // one scale for dataset contexts and dreams: the larger of the two maxima
    var scale = Math.max(IX.max_activation[i], best.length ? best[0].activation : 0);
    prompts.textContent = "";
    best.forEach(function (m) { prompts.appendChild(promptRow(m, scale)); });
    note.textContent = r.evaluated + " prompts evaluated in " + r.seconds.toFixed(1) + " s (" + r.config.steps +
      " steps, population " + r.config.population + ", " + r.config.children + " children each)" +
      (r.config.surrogate_used ? "; firing-margin surrogate on" : "") +
      ". Best dreamed activation " + fmt(best.length ? best[0].activation : 0) +
      (IX.density[i] > 0 ? " vs dataset max " + fmt(IX.max_activation[i]) : " (never fired on the dataset)") + ".";
    section.classList.remove("hidden");
    drawFrontier(i, r).then(function () { section.setAttribute("data-dream", String(i)); });
  }

  var current = null;
  function update() {
    var box = byId("feature"), i = parseInt(box.getAttribute("data-feature"), 10);
    current = i;
    place(IX.density[i] === 0);
    if (!dreamed[i]) {
      section.classList.add("hidden");
      section.removeAttribute("data-dream");
      Plotly.purge(plotBox);
      return;
    }
    load(i, function (r) { if (current === i) render(i, r); });
  }
  new MutationObserver(update).observe(byId("feature"), { attributes: true, attributeFilter: ["data-feature"] });
})();
