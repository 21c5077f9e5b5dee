// mechscope feature browser: index scatter (WebGL) + sortable feature table, lazily loaded
// feature pages. Model text reaches the DOM through textContent only; labels handed to Plotly
// go through ptext (Plotly decodes &amp; &lt; &gt; and nothing else, so exactly those).
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("mechscope-data").textContent);
  var NONCE = document.querySelector('meta[name="mechscope-nonce"]').content;
  var M = DATA.meta, IX = DATA.index, N = IX.density.length;
  var chunks = {}, pending = {}, current = null;
  var floor = Math.log10(0.5 / Math.max(M.n_tokens, 1));
  var PLOT_CONFIG = { responsive: true, displaylogo: false,
    modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d", "toggleSpikelines",
                             "hoverClosestCartesian", "hoverCompareCartesian"] };
  var nDead = IX.density.filter(function (d) { return d === 0; }).length;

  function ptext(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function byId(id) { return document.getElementById(id); }
  function fmt(x) { return Math.abs(x) >= 1e-3 || x === 0 ? x.toFixed(3) : x.toExponential(2); }
  var visibleToken = window.mechscopeVisible;  // labels: whitespace made visible (tokens.js)
  // running text (contexts): spaces stay spaces, line breaks and tabs are marked
  function flowToken(t) { return String(t).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d"); }
  function quoted(t) { return "\u201c" + visibleToken(t) + "\u201d"; }
  function summaryText(i) {
    return IX.summary[i].map(function (p) { return quoted(p[0]) + " \u00d7" + p[1]; }).join(", ");
  }

  // ---- index: scatter + table ----------------------------------------------------------
  var ctl = {
    hideDead: byId("hide-dead"), hideDense: byId("hide-dense"), dense: byId("dense-threshold"),
    colour: byId("colour-by"), search: byId("search"), filter: byId("filter"), inContexts: byId("in-contexts"),
  };
  var sortKey = "index", sortDesc = false, contextText = null;
  function passes(i) {  // the filters shared by scatter and table
    if (ctl.hideDense.checked && IX.density[i] > parseFloat(ctl.dense.value)) return false;
    var q = ctl.filter.value.trim().toLowerCase();
    if (!q) return true;
    if (/^#?\d+$/.test(q)) return i === parseInt(q.replace("#", ""), 10);
    var hay = IX.summary[i].map(function (p) { return p[0]; }).concat(IX.promotes[i]).join("\u0000").toLowerCase();
    if (hay.indexOf(q) >= 0) return true;
    return !!(contextText && contextText[i].indexOf(q) >= 0);
  }
  function indexTrace() {
    var xs = [], ys = [], cs = [], ids = [], col = IX[ctl.colour.value];
    for (var i = 0; i < N; i++) {
      var d = IX.density[i];
      if (d === 0 || !passes(i)) continue;  // dead features have no density to plot: counted instead
      xs.push(Math.log10(d));
      ys.push(IX.mean_activation[i]);
      cs.push(ctl.colour.value === "density" ? Math.log10(d) : col[i]);
      ids.push(i);
    }
    byId("count").textContent = ids.length + " of " + (N - nDead) + " live features plotted \u00b7 " + nDead +
      " dead (never fired on " + M.n_tokens + " tokens)";
    return {
      type: "scattergl", mode: "markers", x: xs, y: ys, customdata: ids,
      marker: { size: 6, color: cs, colorscale: "Viridis", showscale: true,
                colorbar: { title: { text: ptext(ctl.colour.options[ctl.colour.selectedIndex].text), side: "right" } } },
      hovertemplate: "feature %{customdata}<br>log10 density %{x:.2f}<br>mean act %{y:.3f}<extra></extra>",
    };
  }
  var layout = {
    margin: { l: 60, r: 10, t: 36, b: 45 }, dragmode: "zoom", hovermode: "closest",
    xaxis: { title: { text: "log10 firing density" } },
    yaxis: { title: { text: "mean activation when firing" } },
  };
  var plot = byId("index-plot");
  function drawIndex() { return Plotly.react(plot, [indexTrace()], layout, PLOT_CONFIG); }

  var COLUMNS = [["index", "#"], ["density", "density"], ["mean_activation", "mean"],
                 ["max_activation", "max"], ["summary", "fires on (top contexts)"], ["promotes", "promotes"]];
  function drawTable() {
    var rows = [];
    for (var i = 0; i < N; i++) {
      if (ctl.hideDead.checked && IX.density[i] === 0) continue;
      if (passes(i)) rows.push(i);
    }
    if (sortKey !== "index" && sortKey !== "summary" && sortKey !== "promotes") {
      var v = IX[sortKey];
      rows.sort(function (a, b) { return (v[a] - v[b]) || (a - b); });
    }
    if (sortDesc) rows.reverse();
    var head = byId("table-head"), body = byId("table-body"), limit = 300;
    head.textContent = "";
    COLUMNS.forEach(function (c) {
      var th = el("th", c[0] === sortKey ? "sorted" : null, c[1] + (c[0] === sortKey ? (sortDesc ? " \u25bc" : " \u25b2") : ""));
      th.setAttribute("data-key", c[0]);
      head.appendChild(th);
    });
    body.textContent = "";
    rows.slice(0, limit).forEach(function (i) {
      var tr = el("tr", IX.density[i] === 0 ? "dead" : null);
      tr.setAttribute("data-feature", i);
      tr.appendChild(el("td", null, String(i)));
      tr.appendChild(el("td", null, IX.density[i] === 0 ? "dead" : IX.density[i].toExponential(2)));
      tr.appendChild(el("td", null, IX.density[i] === 0 ? "" : fmt(IX.mean_activation[i])));
      tr.appendChild(el("td", null, IX.density[i] === 0 ? "" : fmt(IX.max_activation[i])));
      tr.appendChild(el("td", "tokcell", summaryText(i)));
      tr.appendChild(el("td", "tokcell", IX.promotes[i].map(quoted).join(" ")));
      body.appendChild(tr);
    });
    byId("table-count").textContent = rows.length + " rows" + (rows.length > limit ? " (first " + limit + " shown)" : "");
  }
  function redraw() { drawTable(); return drawIndex(); }
  byId("table-head").addEventListener("click", function (ev) {
    var key = ev.target.getAttribute("data-key");
    if (!key || key === "summary" || key === "promotes") return;
    sortDesc = key === sortKey ? !sortDesc : key !== "index";
    sortKey = key;
    drawTable();
  });
  byId("table-body").addEventListener("click", function (ev) {
    var tr = ev.target.closest("tr");
    if (tr) show(parseInt(tr.getAttribute("data-feature"), 10));
  });
  drawTable();
  drawIndex().then(function () {
    plot.on("plotly_click", function (ev) {
      if (ev.points && ev.points.length) show(ev.points[0].customdata);
    });
    document.body.setAttribute("data-index-ready", "1");
    route();
  });
  [ctl.hideDead, ctl.hideDense, ctl.dense, ctl.colour].forEach(function (c) { c.addEventListener("change", redraw); });
  ctl.filter.addEventListener("input", redraw);
  ctl.inContexts.addEventListener("change", function () {
    if (ctl.inContexts.checked && !contextText) loadContextText(redraw); else redraw();
  });
  byId("search-form").addEventListener("submit", function (ev) {
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
  function loadContextText(done) {  // text search over top contexts needs every chunk once
    var n = Math.ceil(N / M.chunk_size), left = n, text = new Array(N);
    message("loading " + n + " chunks of contexts\u2026");
    for (var c = 0; c < n; c++) {
      loadChunk(c, function (cards) {
        cards.forEach(function (card) {
          text[card.index] = card.top_contexts.map(function (x) { return x.tokens.join(""); }).join("\u0000").toLowerCase();
        });
        if (--left === 0) { contextText = text; message(""); done(); }
      });
    }
  }
  function message(text) { byId("message").textContent = text; }

  // ---- graphs containing the feature (graphs.js, apps/graph_index.py) ----------------------
  var GRAPHS = null, graphCard = null;
  window.mechscopeGraphs = function (index) { GRAPHS = index; if (graphCard) graphsSection(graphCard); };
  (function () {
    var s = document.createElement("script");
    s.nonce = NONCE;
    s.src = M.graphs;
    s.onerror = function () { message("could not load " + s.src); };
    document.head.appendChild(s);
  })();
  function nodeLink(page, id, text) {
    var a = el("a", "graph-node", text);
    a.href = page + "#node=" + encodeURIComponent(id);
    a.setAttribute("data-node", id);
    return a;
  }
  function graphsSection(card) {
    graphCard = card;
    var list = byId("f-graphs"), key = String(card.index), rows = [];
    list.textContent = "";
    Object.keys((GRAPHS && GRAPHS.graphs) || {}).forEach(function (page) {
      var nodes = GRAPHS.graphs[page].features[key];
      if (nodes && nodes.length) rows.push([page, GRAPHS.graphs[page], nodes]);
    });
    rows.sort(function (a, b) { return Math.abs(b[2][0][1]) - Math.abs(a[2][0][1]) || (a[0] < b[0] ? -1 : 1); });
    byId("f-graph-section").classList.toggle("hidden", !rows.length);
    rows.forEach(function (r) {
      var page = r[0], g = r[1], nodes = r[2], li = el("li");
      var main = nodeLink(page, nodes[0][0], page.split("/").pop());
      main.title = page + (g.prompts && g.prompts.length ? "\n" + g.prompts.join("\n") : "");
      li.appendChild(main);
      li.appendChild(el("span", "meta", " " + (g.method || "graph") + " \u00b7 " + g.n_prompts +
        (g.n_prompts === 1 ? " prompt" : " prompts") + " \u00b7 " + nodes.length + (nodes.length === 1 ? " node: " : " nodes: ")));
      nodes.slice(0, 8).forEach(function (n) {
        var at = n[0].lastIndexOf("@");
        li.appendChild(nodeLink(page, n[0], (at >= 0 ? n[0].slice(at) : "\u03a3") + " (" + fmt(n[1]) + ")"));
        li.appendChild(document.createTextNode(" "));
      });
      list.appendChild(li);
    });
  }

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

  function tokenTitle(t, id) { return JSON.stringify(t) + (id === undefined ? "" : " \u00b7 id " + id); }
  function contextRow(ctx, scale, label) {
    var row = el("div", "ctx");
    if (label !== undefined) row.appendChild(el("span", "q", label));
    ctx.tokens.forEach(function (t, j) {
      var a = ctx.activations[j], span = el("span", "tok" + (j === ctx.max_index ? " focus" : ""), flowToken(t));
      var alpha = scale > 0 ? Math.max(0, Math.min(1, a / scale)) : 0;
      span.style.backgroundColor = "rgba(255, 120, 0, " + alpha.toFixed(3) + ")";
      span.title = tokenTitle(t, (ctx.ids || [])[j]) + ": " + fmt(a);
      span.setAttribute("data-act", a);
      row.appendChild(span);
    });
    return row;
  }
  function tokenList(box, pairs, ids) {
    pairs.forEach(function (p, j) {
      var s = el("span", "chip", visibleToken(p[0]));
      s.title = tokenTitle(p[0], ids ? ids[j] : undefined) + ": " + fmt(p[1]);
      box.appendChild(s);
    });
  }
  function explain(card) {  // the first explanation: what it fires on, what it writes
    var box = byId("f-explain");
    box.textContent = "";
    if (card.top_contexts.length) {
      var p = el("p", null, "Fires most on: " + summaryText(card.index) + " (focus tokens of its " +
                 card.top_contexts.length + " top contexts)");
      box.appendChild(p);
    }
    [["Promotes: ", card.top_logits.slice(0, 5), card.top_logit_ids],
     ["Suppresses: ", card.bottom_logits.slice(0, 5), card.bottom_logit_ids]].forEach(function (r) {
      if (!r[1].length) return;
      var q = el("p", null, r[0]);
      tokenList(q, r[1], r[2]);
      box.appendChild(q);
    });
  }
  function render(card) {
    var box = byId("feature"), dead = card.density === 0;
    box.classList.remove("hidden");
    byId("f-title").textContent = "Feature " + card.index + (dead ? " \u2014 dead" : "");
    explain(card);
    var st = byId("f-stats");
    st.textContent = "";
    (dead ? [["density", "0 (never fired)"], ["tokens", card.n_tokens]]
     : [["density", fmt(card.density)], ["mean activation", fmt(card.mean_activation)],
        ["max activation", fmt(card.max_activation)], ["tokens", card.n_tokens]]).forEach(function (kv) {
      st.appendChild(el("span", null, kv[0] + ": " + kv[1]));
    });
    byId("f-dead").textContent = dead ? "This feature never fired on the " + card.n_tokens +
      " tokens sampled: it has no contexts and no activation histogram. Its decoder direction " +
      "still writes to the residual stream; its logit effect is below." : "";
    byId("f-dead").classList.toggle("hidden", !dead);
    byId("f-live").classList.toggle("hidden", dead);
    byId("f-hist-box").classList.toggle("hidden", dead);
    var top = byId("f-top"), qs = byId("f-quantiles");
    top.textContent = ""; qs.textContent = "";
    card.top_contexts.forEach(function (c) { top.appendChild(contextRow(c, card.max_activation)); });
    card.quantile_contexts.forEach(function (c) {
      qs.appendChild(contextRow(c, card.max_activation, "q" + Math.round(100 * c.quantile)));
    });
    byId("f-quantile-section").classList.toggle("hidden", !card.quantile_contexts.length);
    if (dead) Plotly.purge("f-hist"); else drawHistogram(card);
    drawLogits(card);
    neighbours(card);
    graphsSection(card);
    box.setAttribute("data-feature", card.index);
    if (box.getBoundingClientRect().top > 0.6 * window.innerHeight) box.scrollIntoView({ block: "start" });
  }
  function neighbours(card) {
    var nb = byId("neighbours");
    nb.textContent = "";
    byId("f-neighbour-section").classList.toggle("hidden", !card.neighbours.length);
    card.neighbours.forEach(function (p) {
      var a = el("a", IX.density[p[0]] === 0 ? "dead" : null, "#" + p[0] + " (" + p[1].toFixed(2) + ")");
      a.href = "#f" + p[0];
      a.title = IX.density[p[0]] === 0 ? "dead feature" : "fires on " + summaryText(p[0]);
      var li = el("li");
      li.appendChild(a);
      li.appendChild(el("span", "meta", IX.density[p[0]] === 0 ? " dead" : " " + summaryText(p[0])));
      nb.appendChild(li);
    });
  }
  function bars(edges, counts) {
    var x = [], w = [];
    for (var j = 0; j < counts.length; j++) { x.push((edges[j] + edges[j + 1]) / 2); w.push(edges[j + 1] - edges[j]); }
    return { x: x, w: w };
  }
  var SMALL = { l: 50, r: 10, t: 30, b: 40 };
  function drawHistogram(card) {
    var b = bars(card.hist_edges, card.hist_counts);
    Plotly.react("f-hist", [{ type: "bar", x: b.x, y: card.hist_counts, width: b.w, marker: { color: "#e67e22" },
      hovertemplate: "activation %{x:.3f}<br>count %{y}<extra></extra>" }],
      { margin: SMALL, xaxis: { title: { text: "activation" } }, yaxis: { title: { text: "count" } } }, PLOT_CONFIG);
  }
  function drawLogits(card) {
    var rows = card.top_logits.slice().reverse().concat(card.bottom_logits.slice().reverse());
    var ids = (card.top_logit_ids || []).slice().reverse().concat((card.bottom_logit_ids || []).slice().reverse());
    byId("f-logit-section").classList.toggle("hidden", !rows.length);
    if (!rows.length) { Plotly.purge("f-logits"); Plotly.purge("f-logit-hist"); return; }
    var ys = rows.map(function (r, j) { return j; });  // numeric y: repeated tokens stay separate rows
    var labels = rows.map(function (r) { return ptext(visibleToken(r[0])); });
    var hover = rows.map(function (r, j) { return ptext(tokenTitle(r[0], ids[j])); });
    byId("f-logits").style.height = (70 + 18 * rows.length) + "px";  // one readable row per token
    Plotly.react("f-logits", [{ type: "bar", orientation: "h", y: ys, x: rows.map(function (r) { return r[1]; }),
      customdata: hover, marker: { color: rows.map(function (r) { return r[1] >= 0 ? "#2e86de" : "#c0392b"; }) },
      hovertemplate: "%{customdata}: %{x:.3f}<extra></extra>" }],
      { margin: { l: 20, r: 10, t: 30, b: 40 }, xaxis: { title: { text: "logit effect" } },
        yaxis: { automargin: true, tickmode: "array", tickvals: ys, ticktext: labels } }, PLOT_CONFIG);
    var lh = byId("f-logit-hist"), hasHist = !!(card.logit_hist_counts && card.logit_hist_counts.length);
    byId("f-logit-hist-box").classList.toggle("hidden", !hasHist);
    if (hasHist) {
      var b = bars(card.logit_hist_edges, card.logit_hist_counts);
      Plotly.react(lh, [{ type: "bar", x: b.x, y: card.logit_hist_counts, width: b.w,
        marker: { color: b.x.map(function (v) { return v >= 0 ? "#2e86de" : "#c0392b"; }) },
        hovertemplate: "logit effect %{x:.3f}<br>%{y} tokens<extra></extra>" }],
        { margin: SMALL, xaxis: { title: { text: "logit effect" } }, yaxis: { title: { text: "tokens" } } }, PLOT_CONFIG);
    } else { Plotly.purge(lh); }
    var tb = byId("f-logit-table");
    tb.textContent = "";
    var tIds = (card.top_logit_ids || []).concat(card.bottom_logit_ids || []);
    card.top_logits.concat(card.bottom_logits).forEach(function (r, j) {  // reading order: most promoted first
      var tr = el("tr");
      tr.appendChild(el("td", null, visibleToken(r[0])));
      tr.appendChild(el("td", "meta", tIds[j] === undefined ? "" : "id " + tIds[j]));
      tr.appendChild(el("td", null, fmt(r[1])));
      tb.appendChild(tr);
    });
  }
})();
