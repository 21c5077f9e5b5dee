// mechscope feature browser: index scatter (WebGL), lazily loaded feature pages.
// All model text reaches the DOM through textContent; strings given to Plotly are escaped.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("mechscope-data").textContent);
  var NONCE = document.querySelector('meta[name="mechscope-nonce"]').content;
  var M = DATA.meta, IX = DATA.index, N = IX.density.length;
  var chunks = {}, pending = {}, current = null;
  var floor = Math.log10(0.5 / Math.max(M.n_tokens, 1));

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(x) { return Math.abs(x) >= 1e-3 || x === 0 ? x.toFixed(3) : x.toExponential(2); }
  function visibleToken(t) { return t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192"); }

  // ---- index ---------------------------------------------------------------------------
  var ctl = {
    hideDead: document.getElementById("hide-dead"),
    hideDense: document.getElementById("hide-dense"),
    dense: document.getElementById("dense-threshold"),
    colour: document.getElementById("colour-by"),
    search: document.getElementById("search"),
  };
  function indexTrace() {
    var xs = [], ys = [], cs = [], ids = [], col = IX[ctl.colour.value];
    var thr = parseFloat(ctl.dense.value);
    for (var i = 0; i < N; i++) {
      var d = IX.density[i];
      if (ctl.hideDead.checked && d === 0) continue;
      if (ctl.hideDense.checked && d > thr) continue;
      xs.push(d > 0 ? Math.log10(d) : floor);
      ys.push(IX.mean_activation[i]);
      cs.push(ctl.colour.value === "density" ? (d > 0 ? Math.log10(d) : floor) : col[i]);
      ids.push(i);
    }
    document.getElementById("count").textContent = ids.length + " of " + N + " features shown";
    return {
      type: "scattergl", mode: "markers", x: xs, y: ys, customdata: ids,
      marker: { size: 6, color: cs, colorscale: "Viridis", showscale: true,
                colorbar: { title: { text: esc(ctl.colour.options[ctl.colour.selectedIndex].text) } } },
      hovertemplate: "feature %{customdata}<br>log10 density %{x:.2f}<br>mean act %{y:.3f}<extra></extra>",
    };
  }
  var layout = {
    margin: { l: 60, r: 20, t: 10, b: 45 }, dragmode: "zoom", hovermode: "closest",
    xaxis: { title: { text: "log10 firing density (dead at " + floor.toFixed(1) + ")" } },
    yaxis: { title: { text: "mean activation when firing" } },
  };
  var plot = document.getElementById("index-plot");
  function drawIndex() { return Plotly.react(plot, [indexTrace()], layout, { responsive: true }); }
  drawIndex().then(function () {
    plot.on("plotly_click", function (ev) {
      if (ev.points && ev.points.length) show(ev.points[0].customdata);
    });
    document.body.setAttribute("data-index-ready", "1");
    route();
  });
  [ctl.hideDead, ctl.hideDense, ctl.dense, ctl.colour].forEach(function (c) {
    c.addEventListener("change", drawIndex);
  });
  document.getElementById("search-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    show(parseInt(ctl.search.value, 10));
  });

  // ---- lazy chunks -------------------------------------------------------------------------
  window.mechscopeChunk = function (c, cards) {
    chunks[c] = cards;
    (pending[c] || []).forEach(function (f) { f(cards); });
    delete pending[c];
  };
  function loadChunk(c, done) {
    if (chunks[c]) return done(chunks[c]);
    if (pending[c]) return pending[c].push(done);
    pending[c] = [done];
    var s = document.createElement("script");
    s.nonce = NONCE;
    s.src = M.chunk_dir + "/chunk_" + String(c).padStart(5, "0") + ".js";
    s.onerror = function () { message("could not load " + s.src); };
    document.head.appendChild(s);
  }
  function message(text) { document.getElementById("message").textContent = text; }

  // ---- feature page ------------------------------------------------------------------------
  function show(i) {
    if (!(i >= 0 && i < N)) { message("no feature " + ctl.search.value + " (valid: 0.." + (N - 1) + ")"); return; }
    message("");
    if (location.hash !== "#f" + i) history.replaceState(null, "", "#f" + i);
    current = i;
    loadChunk(Math.floor(i / M.chunk_size), function (cards) {
      if (current === i) render(cards[i % M.chunk_size]);
    });
  }
  function route() {
    var m = /^#f(\d+)$/.exec(location.hash);
    if (m) show(parseInt(m[1], 10));
  }
  window.addEventListener("hashchange", route);

  function contextRow(ctx, scale, label) {
    var row = el("div", "ctx");
    if (label !== undefined) row.appendChild(el("span", "q", label));
    ctx.tokens.forEach(function (t, j) {
      var a = ctx.activations[j], span = el("span", "tok" + (j === ctx.max_index ? " focus" : ""), visibleToken(t));
      var alpha = scale > 0 ? Math.max(0, Math.min(1, a / scale)) : 0;
      span.style.backgroundColor = "rgba(255, 120, 0, " + alpha.toFixed(3) + ")";
      span.title = JSON.stringify(t) + ": " + fmt(a);
      span.setAttribute("data-act", a);
      row.appendChild(span);
    });
    return row;
  }
  function render(card) {
    var box = document.getElementById("feature");
    box.classList.remove("hidden");
    document.getElementById("f-title").textContent = "Feature " + card.index;
    var st = document.getElementById("f-stats");
    st.textContent = "";
    [["density", fmt(card.density)], ["mean activation", fmt(card.mean_activation)],
     ["max activation", fmt(card.max_activation)], ["tokens", card.n_tokens]].forEach(function (kv) {
      st.appendChild(el("span", null, kv[0] + ": " + kv[1]));
    });
    var top = document.getElementById("f-top"), qs = document.getElementById("f-quantiles");
    top.textContent = ""; qs.textContent = "";
    if (!card.top_contexts.length) top.appendChild(el("p", null, "This feature never fired."));
    card.top_contexts.forEach(function (c) { top.appendChild(contextRow(c, card.max_activation)); });
    card.quantile_contexts.forEach(function (c) {
      qs.appendChild(contextRow(c, card.max_activation, "q" + Math.round(100 * c.quantile)));
    });
    drawHistogram(card);
    drawLogits(card);
    var nb = document.getElementById("neighbours");
    nb.textContent = "";
    card.neighbours.forEach(function (p) {
      var a = el("a", null, "#" + p[0] + " (" + p[1].toFixed(2) + ")");
      a.href = "#f" + p[0];
      nb.appendChild(a);
    });
    box.setAttribute("data-feature", card.index);
  }
  function drawHistogram(card) {
    var e = card.hist_edges, x = [], w = [];
    for (var j = 0; j < card.hist_counts.length; j++) { x.push((e[j] + e[j + 1]) / 2); w.push(e[j + 1] - e[j]); }
    Plotly.react("f-hist", [{ type: "bar", x: x, y: card.hist_counts, width: w, marker: { color: "#e67e22" },
      hovertemplate: "activation %{x:.3f}<br>count %{y}<extra></extra>" }],
      { margin: { l: 50, r: 10, t: 30, b: 40 }, title: { text: "activation histogram (firing tokens)" },
        xaxis: { title: { text: "activation" } }, yaxis: { title: { text: "count" } } }, { responsive: true });
  }
  function drawLogits(card) {
    var rows = card.top_logits.slice().reverse().concat(card.bottom_logits.slice().reverse());
    var ys = rows.map(function (r, j) { return j; });  // numeric y: repeated tokens stay separate rows
    var labels = rows.map(function (r) { return esc(JSON.stringify(r[0])); });
    Plotly.react("f-logits", [{ type: "bar", orientation: "h", y: ys, x: rows.map(function (r) { return r[1]; }),
      customdata: labels, marker: { color: rows.map(function (r) { return r[1] >= 0 ? "#2e86de" : "#c0392b"; }) },
      hovertemplate: "%{customdata}: %{x:.3f}<extra></extra>" }],
      { margin: { l: 140, r: 10, t: 30, b: 40 }, title: { text: "direct logit effect (decoder \u00b7 W_U)" },
        yaxis: { automargin: true, tickmode: "array", tickvals: ys, ticktext: labels } }, { responsive: true });
    var tb = document.getElementById("f-logit-table");
    tb.textContent = "";
    rows.forEach(function (r) {
      var tr = el("tr");
      tr.appendChild(el("td", null, visibleToken(r[0])));
      tr.appendChild(el("td", null, fmt(r[1])));
      tb.appendChild(tr);
    });
  }
})();
