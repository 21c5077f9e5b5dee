// mechscope graph viewer: draws the embedded figures (one per view: the graph, each prompt's
// graph); hovering a node highlights its neighbourhood, clicking it opens the detail panel.
// Model text reaches the DOM through textContent only; links are checked before they are followed.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("mechscope-data").textContent);
  var div = document.getElementById("graph"), detail = document.getElementById("detail");
  var body = document.getElementById("detail-body"), select = document.getElementById("prompt");
  var view = null, adj = null, hoverTrace = -1, dimmed = null, busy = false;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmt(w) { return typeof w === "number" ? w.toPrecision(3) : String(w); }
  var shown = window.mechscopeVisible;  // tokens.js: whitespace made visible
  function safeUrl(url) { return typeof url === "string" && url && !/^\s*(javascript|data|vbscript):/i.test(url); }

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
    return parts.join(" \u00b7 ");
  }

  function buildAdj(v) {
    var a = {};
    Object.keys(v.nodes).forEach(function (id) { a[id] = { in: [], out: [] }; });
    v.edges.forEach(function (e) { a[e[1]].in.push([e[0], e[2]]); a[e[0]].out.push([e[1], e[2]]); });
    Object.keys(a).forEach(function (id) {
      var by = function (p, q) { return Math.abs(q[1]) - Math.abs(p[1]); };
      a[id].in.sort(by); a[id].out.sort(by);
    });
    return a;
  }

  function nodeTraces() {  // indices of the node traces (customdata [id, url])
    var out = [];
    div.data.forEach(function (t, i) { if (t.customdata && t.mode === "markers+text") out.push(i); });
    return out;
  }
  function position(id) {
    var traces = div.data;
    for (var k = 0; k < traces.length; k++) {
      var t = traces[k];
      if (!t.customdata || t.mode !== "markers+text") continue;
      for (var i = 0; i < t.customdata.length; i++) if (t.customdata[i][0] === id) return [t.x[i], t.y[i]];
    }
    return null;
  }

  // hover: the node's edges drawn on top, every other node faded
  // (a restyle redraws the plot and Plotly then reports an unhover: ignored while it runs)
  function highlight(id) {
    if (dimmed === id) return;
    var near = {}, xs = [], ys = [];
    near[id] = true;
    adj[id].in.concat(adj[id].out).forEach(function (p) { near[p[0]] = true; });
    var me = position(id);
    Object.keys(near).forEach(function (other) {
      if (other === id) return;
      var q = position(other);
      if (me && q) { xs.push(me[0], q[0], null); ys.push(me[1], q[1], null); }
    });
    var ids = nodeTraces();
    var op = ids.map(function (k) { return div.data[k].customdata.map(function (c) { return near[c[0]] ? 1 : 0.15; }); });
    dimmed = id; busy = true;
    Plotly.restyle(div, { "marker.opacity": op }, ids)
      .then(function () { return Plotly.restyle(div, { x: [xs], y: [ys] }, [hoverTrace]); })
      .then(function () { setTimeout(function () { busy = false; }, 0); });
  }
  function unhighlight() {
    if (!dimmed || busy) return;
    dimmed = null;
    var ids = nodeTraces();
    Plotly.restyle(div, { "marker.opacity": ids.map(function () { return 1; }) }, ids);
    Plotly.restyle(div, { x: [[]], y: [[]] }, [hoverTrace]);
  }

  function contributions(title, list) {
    var box = el("div");
    box.appendChild(el("h3", title + " (" + list.length + ")"));
    if (!list.length) { box.appendChild(el("p", "none", "meta")); return box; }
    var table = el("table", null, "contrib");
    list.slice(0, 12).forEach(function (p) {
      var tr = el("tr"), a = el("a", p[0]);  // canonical ids: labels like a token string are ambiguous
      a.href = "#"; a.setAttribute("data-node", p[0]);
      a.addEventListener("click", function (ev) { ev.preventDefault(); openNode(p[0]); });
      var td = el("td"); td.appendChild(a); tr.appendChild(td);
      tr.appendChild(el("td", fmt(p[1]), p[1] < 0 ? "neg" : "pos"));
      table.appendChild(tr);
    });
    box.appendChild(table);
    if (list.length > 12) box.appendChild(el("p", "… " + (list.length - 12) + " more", "meta"));
    return box;
  }

  // heads: the attention pattern on each stored prompt (a selector when there are several) and
  // the tokens the head's output promotes directly (apps/head_details.py)
  function drawPattern(plot, pattern, tokens) {
    var toks = pattern.map(function (r, i) { return i + " " + shown(i < tokens.length ? tokens[i] : "?"); });
    Plotly.react(plot, [{ type: "heatmap", z: pattern, x: toks, y: toks, colorscale: "Blues", reversescale: true,
      hovertemplate: "query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>", showscale: false }],
      { margin: { l: 90, r: 10, t: 10, b: 90 }, font: { size: 10 },
        yaxis: { type: "category", autorange: "reversed", title: { text: "query" }, automargin: true },
        xaxis: { type: "category", title: { text: "key" }, automargin: true } }, { displayModeBar: false });
  }
  function headPanel(n) {
    var H = view.heads || {}, head = n.id.split("@")[0];
    var patterns = (H.attention || {})[head] || [], top = (H.top_tokens || {})[n.id];
    if (!patterns.length && !top) return null;
    var box = el("div", null, "head-panel");
    if (patterns.length) {
      var h = el("h3", "attention pattern of " + head + (patterns.length > 1 ? " on prompt " : " on the prompt"));
      box.appendChild(h);
      var plot = el("div", null, "plot-attn");
      if (patterns.length > 1) {
        var sel = el("select", null, "attn-prompt");
        patterns.forEach(function (p, k) { var o = el("option", String(k)); o.value = String(k); sel.appendChild(o); });
        sel.addEventListener("change", function () { drawPattern(plot, patterns[+sel.value], view.prompt_tokens[+sel.value] || []); });
        h.appendChild(sel);
      }
      box.appendChild(plot);
      setTimeout(function () { drawPattern(plot, patterns[0], view.prompt_tokens[0] || view.tokens); }, 0);
    }
    if (top) {
      var avg = H.n_prompts > 1 ? " (mean over " + H.n_prompts + " prompts)" : "";
      box.appendChild(el("h3", "top output tokens: head output \u00b7 W_U" + avg));
      var t = el("table", null, "contrib");
      top.forEach(function (p) {
        var tr = el("tr"), td = el("td", shown(p[0]), "tok");
        td.title = JSON.stringify(p[0]);
        tr.appendChild(td); tr.appendChild(el("td", fmt(p[1])));
        t.appendChild(tr);
      });
      box.appendChild(t);
    }
    return box;
  }

  function openNode(id) {
    var n = view.nodes[id];
    if (!n) return;
    body.textContent = "";
    body.appendChild(el("h2", n.label || n.id));
    body.appendChild(el("code", n.id, "node-id"));
    var facts = ["kind " + n.kind, "layer " + n.layer];
    if (n.position !== null) facts.push("position " + n.position + (n.position < view.tokens.length ? " " + JSON.stringify(view.tokens[n.position]) : ""));
    if (n.site) facts.push("site " + n.site);
    if (n.index !== null) facts.push("index " + n.index);
    facts.push("score " + fmt(n.score));
    body.appendChild(el("p", facts.join(" \u00b7 "), "meta"));
    if (n.url) {
      if (safeUrl(n.url)) {
        var a = el("a", "open feature " + n.index + " in the feature browser", "feature-link");
        a.href = n.url; body.appendChild(a);
      } else body.appendChild(el("p", "refused a script link", "meta"));
    }
    var hp = n.kind === "head" ? headPanel(n) : null;
    if (hp) body.appendChild(hp);
    var units = "";  // the summary line states the units once (some methods' are a sentence long)
    body.appendChild(contributions("contributions in" + units, adj[id].in));
    body.appendChild(contributions("contributions out" + units, adj[id].out));
    detail.setAttribute("data-node", id);
    select_(id);
  }
  function closeNode() {  // the panel keeps its room: opening it never moves the graph under the mouse
    body.textContent = "";
    body.appendChild(el("p", "Click a node for its details; hover one to see its neighbourhood.", "meta"));
    detail.removeAttribute("data-node");
    select_(null);
  }
  // the selected node is ringed (the "selected" trace); its id is in #detail[data-node]
  function select_(id) {
    var k = div.data ? div.data.map(function (t) { return t.name; }).indexOf("selected") : -1;
    if (k < 0) return;
    var at = id ? position(id) : null;
    Plotly.restyle(div, { x: [at ? [at[0]] : []], y: [at ? [at[1]] : []] }, [k]);
  }
  // graph.html#node=<id> (links from feature pages): the view holding the node, the node selected
  function fromHash() {
    var m = /^#node=(.+)$/.exec(location.hash);
    if (!m) return null;
    var id = decodeURIComponent(m[1]), order = [DATA.first];
    DATA.views.forEach(function (v, k) { if (k !== DATA.first) order.push(k); });
    for (var j = 0; j < order.length; j++) if (DATA.views[order[j]].nodes[id]) return [order[j], id];
    document.getElementById("message").textContent = "node " + id + " is not in this graph";
    return null;
  }

  function show(k) {
    view = DATA.views[k];
    adj = buildAdj(view);
    closeNode();
    document.getElementById("summary").textContent = summaryText(view.summary);
    hoverTrace = view.figure.data.map(function (t) { return t.name; }).indexOf("neighbourhood");
    return Plotly.react(div, view.figure.data, view.figure.layout, { responsive: true });
  }

  if (DATA.views.length > 1) {
    DATA.views.forEach(function (v, k) { var o = el("option", v.name); o.value = String(k); select.appendChild(o); });
    select.value = String(DATA.first);
    document.getElementById("prompt-row").classList.remove("hidden");
    select.addEventListener("change", function () { show(Number(select.value)); });
  }
  document.getElementById("detail-close").addEventListener("click", function () {
    closeNode();
  });

  var target = fromHash();
  if (target && select) select.value = String(target[0]);
  show(target ? target[0] : DATA.first).then(function () {
    if (target) openNode(target[1]);
    var point = function (ev) {
      var p = ev.points && ev.points.length ? ev.points[0] : null;
      return p && Array.isArray(p.customdata) ? p.customdata[0] : null;
    };
    div.on("plotly_click", function (ev) { var id = point(ev); if (id) openNode(id); });
    div.on("plotly_hover", function (ev) { var id = point(ev); if (id && adj[id]) highlight(id); });
    div.on("plotly_unhover", unhighlight);
    window.addEventListener("hashchange", function () {
      var t = fromHash();
      if (!t) return;
      if (DATA.views[t[0]] !== view) { if (select) select.value = String(t[0]); show(t[0]).then(function () { openNode(t[1]); }); }
      else openNode(t[1]);
    });
    document.body.setAttribute("data-graph-ready", "1");
  });
})();
