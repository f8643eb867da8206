// capsbench leaderboard page: tables, filters, sorting and a panel per method, all from the JSON
// inlined in <script id="leaderboard-data"> (browsers refuse fetch() on file://, so nothing is fetched).
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("leaderboard-data").textContent);
  const root = document.getElementById("board");
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  };
  const SVG = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  };
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
  const ci = (c) => (c ? ` [${(100 * c[0]).toFixed(1)}, ${(100 * c[1]).toFixed(1)}]` : "");

  // ------------------------------------------------------------------ filters
  const options = (values) => ["(all)", ...values].map((v) => el("option", { value: v, text: v }));
  const protocols = DATA.sections.map((s) => `${s.protocol} v${s.protocol_version}`);
  const datasets = [...new Set(DATA.sections.flatMap((s) => s.datasets.map((d) => d.dataset)))].sort();
  const methods = [...new Set(DATA.sections.flatMap((s) => s.datasets.flatMap((d) => d.rows.map((r) => r.name))))].sort();
  const fProtocol = el("select", { id: "f-protocol" }, ...options(protocols));
  const fDataset = el("select", { id: "f-dataset" }, ...options(datasets));
  const fMethod = el("select", { id: "f-method" }, ...options(methods));
  const shown = el("span", { id: "shown", class: "note" });
  root.append(el("div", { class: "filters" },
    el("label", {}, "protocol ", fProtocol), el("label", {}, "data set ", fDataset),
    el("label", {}, "method ", fMethod), shown));
  const blocks = [];

  function applyFilters() {
    let rows = 0;
    for (const b of blocks) {
      const okSection = fProtocol.value === "(all)" || fProtocol.value === b.protocol;
      const okData = fDataset.value === "(all)" || fDataset.value === b.dataset;
      let visible = 0;
      for (const tr of b.rows) {
        const on = okSection && okData && (fMethod.value === "(all)" || fMethod.value === tr.dataset.method);
        tr.hidden = !on;
        visible += on ? 1 : 0;
      }
      b.node.hidden = !(okSection && okData && visible > 0);
      rows += visible;
    }
    for (const s of document.querySelectorAll("section.protocol")) {
      s.hidden = [...s.querySelectorAll("div.dataset")].every((d) => d.hidden);
    }
    shown.textContent = `${rows} row(s) shown`;
  }
  for (const f of [fProtocol, fDataset, fMethod]) f.addEventListener("change", applyFilters);

  // ------------------------------------------------------------------ tables
  function sortBy(table, col, body) {
    const dir = table.dataset.sortCol === String(col) && table.dataset.sortDir === "asc" ? "desc" : "asc";
    table.dataset.sortCol = String(col);
    table.dataset.sortDir = dir;
    const trs = [...body.querySelectorAll("tr.row")];
    trs.sort((a, b) => {
      const x = JSON.parse(a.dataset.sort)[col], y = JSON.parse(b.dataset.sort)[col];
      const cmp = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return dir === "asc" ? cmp : -cmp;
    });
    for (const tr of trs) { body.append(tr); const panel = tr.nextPanel; if (panel) body.append(panel); }
    for (const th of table.querySelectorAll("th")) th.classList.toggle("sorted", th.dataset.col === String(col));
  }

  function datasetBlock(section, ds) {
    const label = `${section.protocol} v${section.protocol_version}`;
    const table = el("table", { class: "board" });
    const head = el("tr");
    DATA.headers.forEach((h, i) => head.append(el("th", { "data-col": String(i), title: "click to sort", text: h })));
    const body = el("tbody");
    table.append(el("thead", {}, head), body);
    const rows = [];
    for (const row of ds.rows) {
      const tr = el("tr", { class: "row" + (row.baseline ? " baseline" : ""), "data-method": row.name,
                            "data-sort": JSON.stringify(row.sort) });
      row.cells.forEach((c, i) => {
        if (i === 1) {
          tr.append(el("td", {}, el("button", { class: "method", type: "button", text: c,
                                                onclick: () => togglePanel(tr, row, ds) })));
        } else tr.append(el("td", { text: c }));
      });
      body.append(tr);
      rows.push(tr);
    }
    head.querySelectorAll("th").forEach((th) => th.addEventListener("click", () => sortBy(table, Number(th.dataset.col), body)));
    const figure = el("figure", {}, el("img", { src: ds.figure, alt: `accuracy and dead capsules against depth on ${ds.dataset}` }),
                      el("figcaption", { text: "mean and 95% interval over seeds" }));
    const node = el("div", { class: "dataset", "data-dataset": ds.dataset, "data-protocol": label },
      el("h3", { text: `${ds.dataset} (${ds.num_classes || "?"} classes${ds.chance ? ", chance " + pct(ds.chance) : ""})` }),
      el("div", { class: "side" }, el("div", { class: "table" }, table), figure));
    blocks.push({ node, rows, protocol: label, dataset: ds.dataset });
    return node;
  }

  // ------------------------------------------------------------------ method panel
  function togglePanel(tr, row, ds) {
    if (tr.nextPanel) { tr.nextPanel.remove(); tr.nextPanel = null; return; }
    const cell = el("td", { colspan: String(DATA.headers.length) }, methodPanel(row, ds));
    const panel = el("tr", { class: "panel", "data-method": row.name }, cell);
    tr.after(panel);
    tr.nextPanel = panel;
  }

  function methodPanel(row, ds) {
    const t = el("table", { class: "depths" });
    t.append(el("tr", {}, ...["depth", "runs", "ok", "accuracy [95% CI]", "dead types / layer", "dead fraction"]
      .map((h) => el("th", { text: h }))));
    for (const d of row.depths) {
      t.append(el("tr", {}, el("td", { text: String(d.depth) }), el("td", { text: String(d.runs) }),
        el("td", { text: String(d.ok) }), el("td", { text: pct(d.accuracy) + ci(d.accuracy_ci95) }),
        el("td", { text: d.dead === null ? "–" : d.dead.toFixed(2) }), el("td", { text: pct(d.dead_fraction) })));
    }
    return el("div", { class: "method-panel" },
      el("h4", { text: `${row.name} on ${ds.dataset}: per depth` }), t,
      el("h4", { text: "Mean activation of every capsule type (test set, mean over seeds); red ring: dead" }),
      activationGrid(row, ds.dead_threshold),
      el("h4", { text: "Weight-gradient norm per layer (log scale, mean over seeds), one line per depth" }),
      gradientChart(row));
  }

  function shade(a) {  // sqrt stretch (small activations stay distinguishable), dark blue -> yellow
    const s = Math.sqrt(Math.max(0, Math.min(1, a)));
    const c = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    const x = s * (c.length - 1), i = Math.min(c.length - 2, Math.floor(x)), f = x - i;
    return `rgb(${c[i].map((v, k) => Math.round(v + f * (c[i + 1][k] - v))).join(",")})`;
  }

  function activationGrid(row, threshold) {
    const wrap = el("div", { class: "grids" });
    for (const d of row.depths) {
      if (!d.layers.length) continue;
      const width = 12 + 14 * Math.max(...d.layers.map((l) => l[1].length)) + 70;
      const image = svg("svg", { width: String(width), height: String(18 + 16 * d.layers.length), class: "grid",
                                 role: "img", "aria-label": `activations at depth ${d.depth}` });
      const title = svg("text", { x: "0", y: "11", "font-size": "11" });
      title.textContent = `depth ${d.depth}`;
      image.append(title);
      d.layers.forEach(([name, types], li) => {
        const label = svg("text", { x: "0", y: String(28 + 16 * li), "font-size": "10" });
        label.textContent = name;
        image.append(label);
        types.forEach((a, ti) => {
          const dead = a !== null && threshold !== null && a <= threshold;
          image.append(svg("circle", { cx: String(70 + 14 * ti), cy: String(24 + 16 * li), r: "6",
            fill: a === null ? "#ccc" : shade(a), stroke: dead ? "#E00000" : "none", "stroke-width": "2" }));
        });
      });
      wrap.append(image);
    }
    return wrap.childElementCount ? wrap : el("p", { class: "note", text: "no capsule layers recorded" });
  }

  function gradientChart(row) {
    const layers = [...new Set(row.depths.flatMap((d) => d.grads.map((g) => g[0])))];
    const order = (n) => (n === "backbone" ? -2 : n === "primary" ? -1 : n === "class" ? 1e6 : Number(n.replace(/\D/g, "")) || 0);
    layers.sort((a, b) => order(a) - order(b));
    const values = row.depths.flatMap((d) => d.grads.map((g) => g[1])).filter((v) => v > 0);
    if (!values.length || layers.length < 1) return el("p", { class: "note", text: "no gradient norms recorded" });
    const lo = Math.floor(Math.log10(Math.min(...values))), hi = Math.ceil(Math.log10(Math.max(...values)));
    const W = 520, H = 200, L = 50, B = 30;
    const x = (i) => L + (layers.length === 1 ? 0 : (i * (W - L - 10)) / (layers.length - 1));
    const y = (v) => H - B - ((Math.log10(v) - lo) / Math.max(1, hi - lo)) * (H - B - 10);
    const chart = svg("svg", { width: String(W), height: String(H), class: "gradients", role: "img",
                               "aria-label": "gradient norms per layer" });
    for (let p = lo; p <= hi; p++) {
      const t = svg("text", { x: "2", y: String(y(10 ** p) + 4), "font-size": "10" });
      t.textContent = `1e${p}`;
      chart.append(t, svg("line", { x1: String(L), x2: String(W), y1: String(y(10 ** p)), y2: String(y(10 ** p)), stroke: "#eee" }));
    }
    layers.forEach((n, i) => {
      const t = svg("text", { x: String(x(i) - 10), y: String(H - 8), "font-size": "10" });
      t.textContent = n;
      chart.append(t);
    });
    const colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000"];
    row.depths.forEach((d, k) => {
      const pts = d.grads.filter((g) => g[1] > 0).map((g) => `${x(layers.indexOf(g[0]))},${y(g[1])}`);
      if (pts.length) {
        chart.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: colours[k % colours.length], "stroke-width": "1.5" }));
        const tag = svg("text", { x: String(W - 60), y: String(12 + 11 * k), "font-size": "10", fill: colours[k % colours.length] });
        tag.textContent = `depth ${d.depth}`;
        chart.append(tag);
      }
    });
    return chart;
  }

  // ------------------------------------------------------------------ page
  for (const section of DATA.sections) {
    const node = el("section", { class: "protocol", id: section.folder },
      el("h2", { text: `${section.protocol} v${section.protocol_version} (leaderboard ${section.version})` }),
      el("p", { class: "provenance" + (section.provenance.mixed ? " mixed" : ""), text: "Ran on: " + section.provenance_text }),
      el("p", { class: "note" }, "Files: ", el("a", { href: `${section.folder}/leaderboard.csv`, text: "leaderboard.csv" }), " · ",
         el("a", { href: `${section.folder}/depths.csv`, text: "depths.csv" }), " · ",
         el("a", { href: `${section.folder}/leaderboard.json`, text: "leaderboard.json" })));
    for (const ds of section.datasets) node.append(datasetBlock(section, ds));
    root.append(node);
  }
  if (!DATA.sections.length) root.append(el("p", { text: "No records yet." }));
  applyFilters();
})();
