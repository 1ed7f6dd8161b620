// se-compile view: lays out the embedded network(s) top to bottom and keeps the view's state in
// the URL fragment. Hand-written, no library. Data: the JSON in #se-view-data (src/report/view.rs).
'use strict';
(function () {
  // The data, and what is derived from it: replaced as a whole when `--serve` sends new data.
  let DATA, EXC, MODELS, ALL_GROUPS, PARENT, DIFF, DMAPS;
  const W = 266, H = 76, LW = 316, G = 44, HEAD = 22, FOOT = 10, LEFT = 60, TOP = 16;
  const T0 = performance.now();

  // ---- formatting ----
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  const NF = new Intl.NumberFormat('en-US'); // once: toLocaleString builds one per call, slowly
  const int = (n) => NF.format(Number(n));
  function human(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(2) + ' G';
    if (n >= 1e6) return (n / 1e6).toFixed(2) + ' M';
    if (n >= 1e3) return (n / 1e3).toFixed(2) + ' K';
    return String(n);
  }
  function bytes(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(2) + ' GB';
    if (n >= 1e6) return (n / 1e6).toFixed(2) + ' MB';
    if (n >= 1e3) return (n / 1e3).toFixed(2) + ' KB';
    return n + ' B';
  }
  const compact = (t) => t.replace(' ', '');
  const HN = (n) => compact(human(n));
  const BN = (n) => compact(bytes(n));
  const shapeText = (s) => (s && s.length ? s.join('×') : '');
  const base = (f) => String(f).split(/[\\/]/).pop();
  function signed(d, f) { return d === 0 ? '0' : (d > 0 ? '+' : '−') + f(Math.abs(d)); }
  function pctText(p) { return p === null || p === undefined ? '' : p === 0 ? '0%' : (p > 0 ? '+' : '') + p.toFixed(Math.abs(p) < 1 ? 2 : 1) + '%'; }

  // ---- the models ----
  function prepare(data) {
    DATA = data;
    EXC = new Map();
    if (DATA.run) for (const e of DATA.run.excitations || []) EXC.set(e.name, e.overall);
    MODELS = DATA.models.map((m, side) => {
      const groups = new Map();
      for (const g of m.groups) { g.repeat = g.kind === 'stage' ? g.children.length : 1; groups.set(g.path, g); }
      const byName = new Map();
      m.layers.forEach((l, i) => { l.id = i; byName.set(l.name, l); });
      return { m, side, groups, byName, el: null, lay: null };
    });
    ALL_GROUPS = [];
    for (const P of MODELS) for (const g of P.m.groups) if (!ALL_GROUPS.includes(g.path)) ALL_GROUPS.push(g.path);
    PARENT = new Map();
    for (const P of MODELS) for (const g of P.m.groups) if (g.parent) PARENT.set(g.path, g.parent);
    DIFF = DATA.diff;
    DMAPS = DIFF ? { stage: diffMaps('stage'), block: diffMaps('block'), layer: diffMaps('layer') } : null;
  }

  // ---- state (mirrored in the URL fragment) ----
  const state = { all: false, expand: new Set(), layer: null, color: 'kind' };
  const COLORS = ['kind', 'params', 'macs', 'memory'];
  function isOpen(path) { return state.all || state.expand.has(path); }
  function openPath(path) {
    for (let p = path; p; p = PARENT.get(p)) state.expand.add(p);
  }
  function readHash() {
    state.all = false; state.expand = new Set(); state.layer = null; state.color = 'kind';
    const h = decodeURIComponent(location.hash.replace(/^#/, ''));
    for (const part of h.split('&')) {
      const i = part.indexOf('=');
      if (i < 0) continue;
      const k = part.slice(0, i), v = part.slice(i + 1);
      if (k === 'expand') {
        for (const p of v.split(',').filter(Boolean)) { if (p === 'all') state.all = true; else openPath(p); }
      } else if (k === 'layer') state.layer = v || null;
      else if (k === 'color' && COLORS.includes(v)) state.color = v;
    }
  }
  function hashOf() {
    const parts = [];
    if (state.all) parts.push('expand=all');
    else if (state.expand.size) parts.push('expand=' + [...state.expand].filter((p) => ![...state.expand].some((q) => PARENT.get(q) === p)).join(','));
    if (state.layer) parts.push('layer=' + state.layer);
    if (state.color !== 'kind') parts.push('color=' + state.color);
    return parts.length ? '#' + parts.join('&') : '';
  }
  let lastHash = null;
  function writeHash() {
    const h = hashOf();
    lastHash = h;
    if (h !== location.hash && !(h === '' && location.hash === '')) history.replaceState(null, '', h || location.pathname + location.search);
  }

  // ---- the diff ----
  function diffMaps(depth) {
    const t = DIFF && DIFF[depth];
    const a = new Map(), b = new Map();
    if (t) for (const r of t.rows) {
      if (r.status !== 'added') a.set(r.name, r);
      if (r.status !== 'removed') b.set(r.name_b || r.name, r);
    }
    return [a, b];
  }
  function currentDepth() {
    let d = 'stage';
    for (const p of ALL_GROUPS) {
      if (!isOpen(p)) continue;
      const isBlock = MODELS.some((P) => P.groups.has(p) && P.groups.get(p).kind === 'block');
      if (isBlock) return 'layer';
      d = 'block';
    }
    return d;
  }
  function diffRowOf(P, U, depth) {
    if (!DMAPS) return null;
    const name = U.group ? U.group.path : U.layer.name;
    const natural = U.group ? U.group.kind : 'layer';
    for (const d of [depth, natural]) {
      const r = DMAPS[d][P.side].get(name);
      if (r) return r;
    }
    return null;
  }

  // ---- layout ----
  function unitKey(P, l) {
    if (l.stage && P.groups.has(l.stage) && !isOpen(l.stage)) return 'g:' + l.stage;
    if (l.block && P.groups.has(l.block) && !isOpen(l.block)) return 'g:' + l.block;
    return 'l:' + l.id;
  }
  function layout(P) {
    const L = P.m.layers;
    const units = [], idx = new Map(), uOf = new Array(L.length);
    for (const l of L) {
      const k = unitKey(P, l);
      let u = idx.get(k);
      if (u === undefined) {
        u = units.length; idx.set(k, u);
        units.push({ key: k, i: u, group: k[0] === 'g' ? P.groups.get(k.slice(2)) : null, layer: k[0] === 'l' ? l : null, layers: [], preds: [], succs: [] });
      }
      units[u].layers.push(l.id); uOf[l.id] = u;
    }
    const edges = [], emap = new Map();
    for (const l of L) {
      const v = uOf[l.id];
      l.inputs.forEach((i, k) => {
        const u = uOf[i];
        if (u === v) return;
        let e = emap.get(u + '>' + v);
        if (!e) { e = { u, v, k, src: i, shapes: [], se: false }; emap.set(u + '>' + v, e); edges.push(e); units[u].succs.push(e); units[v].preds.push(e); }
        const s = shapeText(L[i].shape);
        if (!e.shapes.includes(s)) e.shapes.push(s);
        if (L[i].se_role === 'branch' || l.se_role === 'branch') e.se = true;
      });
    }
    // Rows: longest path from the inputs (Kahn's order).
    const n = units.length, row = new Array(n).fill(0), indeg = units.map((u) => u.preds.length), topo = [];
    for (let i = 0; i < n; i++) if (!indeg[i]) topo.push(i);
    for (let h = 0; h < topo.length; h++) {
      const u = topo[h];
      for (const e of units[u].succs) { row[e.v] = Math.max(row[e.v], row[u] + 1); if (--indeg[e.v] === 0) topo.push(e.v); }
    }
    // Lane 0: the main path, from the output back along the longest input (an SE scale's
    // feature map, so the excitation branch goes beside it as in the paper's Fig. 3).
    const lane = new Array(n).fill(null);
    for (let cur = uOf[P.m.output]; cur !== undefined && lane[cur] === null;) {
      lane[cur] = 0;
      const U = units[cur];
      if (!U.preds.length) break;
      const scale = U.layer && U.layer.se_role === 'scale' ? P.m.se[U.layer.se] : null;
      let best = null;
      for (const e of U.preds) {
        if (scale && e.u === uOf[scale.features]) { best = e; break; }
        if (!best || row[e.u] > row[best.u] || (row[e.u] === row[best.u] && e.k < best.k)) best = e;
      }
      cur = best.u;
    }
    const occ = new Map();
    const free = (ln, a, b) => !(occ.get(ln) || []).some(([x, y]) => x <= b && a <= y);
    const reserve = (ln, a, b) => { if (!occ.has(ln)) occ.set(ln, []); occ.get(ln).push([a, b]); };
    for (let i = 0; i < n; i++) if (lane[i] === 0) reserve(0, row[i], row[i]);
    for (const i of topo) {
      if (lane[i] !== null) continue;
      const U = units[i], r = row[i];
      const last = Math.max(r, ...U.succs.map((e) => row[e.v] - 1));
      if (U.preds.length === 1) {
        const p = U.preds[0].u;
        if (lane[p] !== 0 && units[p].succs.length === 1) { lane[i] = lane[p]; reserve(lane[i], r, last); continue; }
      }
      const first = Math.min(r, ...U.preds.map((e) => row[e.u] + 1));
      const se = U.layer && U.layer.se_role === 'branch';
      let ln = null;
      for (let k = 1; ln === null; k++) {
        for (const c of se ? [k, -k] : [-k, k]) if (ln === null && free(c, first, last)) ln = c;
      }
      lane[i] = ln; reserve(ln, first, last);
    }
    let minLane = 0, maxLane = 0;
    for (const x of lane) { minLane = Math.min(minLane, x); maxLane = Math.max(maxLane, x); }
    // Frames: expanded groups and SE blocks, with room above and below them.
    const frames = [];
    const fmap = new Map();
    for (const U of units) {
      const keys = [];
      for (const id of U.layers.slice(0, 1)) {
        const l = L[id];
        if (l.stage && P.groups.has(l.stage) && isOpen(l.stage)) keys.push(['stage', l.stage]);
        if (l.block && P.groups.has(l.block) && isOpen(l.block)) keys.push(['block', l.block]);
        if (U.layer && l.se !== null && l.se !== undefined) keys.push(['se', 'se:' + l.se]);
      }
      for (const [kind, key] of keys) {
        let f = fmap.get(key);
        if (!f) { f = { kind, key, units: [], level: kind === 'stage' ? 0 : kind === 'block' ? 1 : 2 }; fmap.set(key, f); frames.push(f); }
        f.units.push(U.i);
      }
    }
    const nrows = Math.max(0, ...row) + 1;
    const extraTop = new Array(nrows).fill(0), extraBot = new Array(nrows).fill(0);
    for (const f of frames) {
      f.r0 = Math.min(...f.units.map((u) => row[u])); f.r1 = Math.max(...f.units.map((u) => row[u]));
      f.l0 = Math.min(...f.units.map((u) => lane[u])); f.l1 = Math.max(...f.units.map((u) => lane[u]));
      extraTop[f.r0] += HEAD; extraBot[f.r1] += FOOT;
    }
    for (const f of frames) {
      const inside = new Set(f.units);
      f.innerTop = frames.filter((g) => g.level > f.level && g.r0 === f.r0 && g.units.some((u) => inside.has(u))).length;
      f.innerBot = frames.filter((g) => g.level > f.level && g.r1 === f.r1 && g.units.some((u) => inside.has(u))).length;
    }
    const laneRows = new Map();
    units.forEach((U) => { const k = lane[U.i]; if (!laneRows.has(k)) laneRows.set(k, []); laneRows.get(k).push(row[U.i]); });
    const blocked = (ln, a, b) => (laneRows.get(ln) || []).some((r) => r > a && r < b);
    const byKey = new Map(units.map((U) => [U.key, U]));
    return { units, byKey, edges, row, lane, frames, blocked, nrows, extraTop, extraBot, minLane, maxLane, ghosts: [] };
  }

  // Where the rows go: `ytop[r]` is row r's top; lanes from minLane to maxLane.
  function placeRows(lay, ytop, height, minLane, maxLane) {
    const laneX = (ln) => LEFT + (ln - minLane) * LW + LW / 2;
    lay.laneX = laneX;
    lay.pos = lay.units.map((U) => ({ cx: laneX(lay.lane[U.i]), y: ytop[lay.row[U.i]] }));
    for (const f of lay.frames) {
      const pad = [20, 11, 4][f.level];
      f.x = laneX(f.l0) - W / 2 - pad; f.w = laneX(f.l1) - laneX(f.l0) + W + 2 * pad;
      f.y = ytop[f.r0] - HEAD * (1 + f.innerTop) + 2; f.h = ytop[f.r1] + H + FOOT * (1 + f.innerBot) - 2 - f.y;
    }
    lay.width = laneX(maxLane) + LW / 2 + 20;
    lay.height = height;
  }
  // Row tops from the room each row needs above and below it (frame titles and feet).
  function rowTops(extraTop, extraBot) {
    const ytop = new Array(extraTop.length);
    let y = TOP;
    for (let r = 0; r < extraTop.length; r++) { y += extraTop[r]; ytop[r] = y; y += H + G + extraBot[r]; }
    return [ytop, y + 10];
  }
  function placeAlone(lay) {
    const [ytop, height] = rowTops(lay.extraTop, lay.extraBot);
    placeRows(lay, ytop, height, lay.minLane, lay.maxLane);
  }
  // B's box for A's, as `se-compile diff` pairs them: the same group, or the layer its
  // layer-depth row names in B.
  function counterpart(PA, PB, U) {
    if (U.group) return PB.lay.byKey.get(U.key) || null;
    const r = DMAPS.layer[0].get(U.layer.name);
    if (!r || r.status === 'removed') return null;
    const l = PB.byName.get(r.name_b || r.name);
    return (l && PB.lay.byKey.get('l:' + l.id)) || null;
  }
  // Two specs, box for box: the rows of A and B are merged so that the longest run of paired
  // boxes whose rows both go down share a row; the rows between two such (A's, then B's) each
  // have one graph's boxes only, and the other graph gets a placeholder (a ghost) for each box
  // that has no counterpart at all. Lanes are the union of both, so the columns line up too.
  function alignRows(PA, PB) {
    const A = PA.lay, B = PB.lay;
    const pairs = [], pairedA = new Set(), pairedB = new Set();
    for (const U of A.units) {
      const V = counterpart(PA, PB, U);
      if (!V) continue;
      pairs.push([A.row[U.i], B.row[V.i]]);
      pairedA.add(U.i); pairedB.add(V.i);
    }
    // The longest chain increasing in both rows (at most one pair per row of either).
    pairs.sort((p, q) => p[0] - q[0] || q[1] - p[1]);
    const tails = [], prev = new Array(pairs.length);
    pairs.forEach((p, k) => {
      let lo = 0, hi = tails.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (pairs[tails[mid]][1] < p[1]) lo = mid + 1; else hi = mid; }
      prev[k] = lo ? tails[lo - 1] : -1;
      tails[lo] = k;
    });
    const anchors = [];
    for (let k = tails.length ? tails[tails.length - 1] : -1; k >= 0; k = prev[k]) anchors.unshift(pairs[k]);
    anchors.push([A.nrows, B.nrows]);
    const mapA = new Array(A.nrows), mapB = new Array(B.nrows);
    let m = 0, i = 0, j = 0;
    for (const [ra, rb] of anchors) {
      while (i < ra) mapA[i++] = m++;
      while (j < rb) mapB[j++] = m++;
      if (ra < A.nrows) { mapA[i++] = m; mapB[j++] = m; m++; }
    }
    const top = new Array(m).fill(0), bot = new Array(m).fill(0);
    for (const [lay, map] of [[A, mapA], [B, mapB]]) {
      map.forEach((mr, r) => { top[mr] = Math.max(top[mr], lay.extraTop[r]); bot[mr] = Math.max(bot[mr], lay.extraBot[r]); });
    }
    const [Y, height] = rowTops(top, bot);
    const minLane = Math.min(A.minLane, B.minLane), maxLane = Math.max(A.maxLane, B.maxLane);
    placeRows(A, mapA.map((mr) => Y[mr]), height, minLane, maxLane);
    placeRows(B, mapB.map((mr) => Y[mr]), height, minLane, maxLane);
    // Ghosts where a box has no counterpart, unless the other graph has a box on that spot.
    const taken = (lay, map) => new Set(lay.units.map((U) => map[lay.row[U.i]] + ':' + lay.lane[U.i]));
    const takenA = taken(A, mapA), takenB = taken(B, mapB);
    const ghosts = (from, map, paired, into, takenInto, status) => from.units
      .filter((U) => !paired.has(U.i) && !takenInto.has(map[from.row[U.i]] + ':' + from.lane[U.i]))
      .map((U) => ({ name: U.group ? U.group.path : U.layer.name, status, x: into.laneX(from.lane[U.i]) - W / 2, y: Y[map[from.row[U.i]]] }));
    A.ghosts = ghosts(B, mapB, pairedB, A, takenA, 'added');
    B.ghosts = ghosts(A, mapA, pairedA, B, takenB, 'removed');
  }

  // ---- drawing ----
  function kindClass(t) {
    if (/Conv/.test(t)) return 'k-conv';
    if (/BatchNorm/.test(t)) return 'k-bn';
    if (/Activation|ReLU|Softmax/.test(t)) return 'k-act';
    if (/Dense/.test(t)) return 'k-dense';
    if (/Pool/.test(t)) return 'k-pool';
    if (/Add|Multiply|Concatenate|Merge|Average|Maximum/.test(t)) return 'k-merge';
    if (/Input/.test(t)) return 'k-in';
    return 'k-other';
  }
  function measures(U) {
    const s = U.group || U.layer;
    return { params: s.params, macs: s.macs, memory: s.bytes };
  }
  function heat(t) {
    const l = 100 - 42 * Math.sqrt(Math.max(0, Math.min(1, t)));
    return 'hsl(28, 92%, ' + l.toFixed(1) + '%)';
  }
  // A bar's length is set apart (`looks`): it is relative to the largest box shown.
  function bar(cls, label, text, title) {
    return '<span class="bar ' + cls + '" title="' + esc(title) + '"><i>' + label + '</i><b><u></u></b>' + esc(text) + '</span>';
  }
  function looks(U, max) {
    const ms = measures(U);
    const w = (k) => (max[k] > 0 ? Math.max(ms[k] > 0 ? 1 : 0, Math.round(100 * ms[k] / max[k])) + '%' : '0%');
    return { bars: [w('params'), w('macs'), w('memory')], bg: state.color !== 'kind' ? heat(max[state.color] ? ms[state.color] / max[state.color] : 0) : '' };
  }
  function restyle(n, look) {
    if (!n.bars) n.bars = [...n.el.querySelectorAll('.bar u')];
    look.bars.forEach((w, k) => { if (n.look.bars[k] !== w) n.bars[k].style.width = w; });
    if (n.look.bg !== look.bg) n.el.style.background = look.bg;
    n.look = look;
  }
  function spark(vals) {
    if (!vals || !vals.length) return '';
    const w = 70, h = 12, n = vals.length;
    const pts = vals.map((v, i) => (n === 1 ? w / 2 : i * w / (n - 1)).toFixed(1) + ',' + (h - Math.max(0, Math.min(1, v)) * h).toFixed(1)).join(' ');
    return '<svg class="spark" width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + ' ' + h + '"><title>mean excitation per channel (0 to 1)</title><polyline points="' + pts + '" fill="none" stroke="#8d5cc4" stroke-width="1"/></svg>';
  }
  function seOfGroup(P, g) {
    return P.m.se.filter((s) => P.m.layers[s.multiply].block === g.path || P.m.layers[s.multiply].stage === g.path);
  }
  // A box without its position: what it shows, compared with the cached one to keep its node.
  function boxHtml(P, U, depth) {
    const ms = measures(U);
    const g = U.group, l = U.layer;
    let cls = 'box', attrs, head, src;
    const dr = diffRowOf(P, U, depth);
    if (g) {
      cls += ' grp';
      attrs = g.kind === 'stage'
        ? 'data-group="' + esc(g.path) + '" data-params="' + g.params + '" data-macs="' + g.macs + '" data-bytes="' + g.bytes + '" data-repeat="' + g.repeat + '"'
        : 'data-group="' + esc(g.path) + '" data-params="' + g.params + '" data-macs="' + g.macs + '" data-bytes="' + g.bytes + '"';
      head = '<span class="n">' + esc(g.path) + '</span><span class="ty">' + esc(g.template) + '</span>' + (g.kind === 'stage' ? '<span class="rep">×' + g.repeat + '</span>' : '');
      const ses = seOfGroup(P, g);
      const exc = ses.length && EXC.size ? spark(EXC.get(ses[ses.length - 1].name)) : '';
      src = [g.layers + ' layers → ' + shapeText(g.shape) + (ses.length ? ' · ' + ses.length + ' SE' : ''), base(P.m.file) + ':' + g.line, exc];
    } else {
      cls += ' ' + kindClass(l.type) + (l.se_role === 'branch' ? ' se' : '');
      attrs = 'data-layer="' + esc(l.name) + '" data-params="' + l.params + '" data-macs="' + l.macs + '" data-bytes="' + l.bytes + '"';
      head = '<span class="n">' + esc(l.name) + '</span><span class="ty">' + esc(l.type) + '</span>';
      const exc = l.se_role === 'scale' && EXC.size ? spark(EXC.get(l.name)) : '';
      src = [(l.config ? l.config + ' → ' : '→ ') + shapeText(l.shape), base(P.m.file) + ':' + l.line, exc];
    }
    const style = 'width:' + W + 'px;height:' + H + 'px';
    let foot = '';
    if (dr) {
      attrs += ' data-diff="' + dr.status + '"';
      if (dr.status !== 'same') cls += ' st-' + dr.status;
      if (dr.status === 'changed' || (dr.status === 'added' && P.side === 1) || (dr.status === 'removed' && P.side === 0)) {
        const d = dr.delta.params;
        foot = '<span class="d ' + (d > 0 ? 'up' : 'down') + '" title="params B − A">Δ ' + signed(d, human) + (dr.pct.params !== null ? ' (' + pctText(dr.pct.params) + ')' : '') + '</span>';
      }
    }
    return '<div class="' + cls + '" ' + attrs + ' data-key="' + esc(U.key) + '" style="' + style + '">' +
      '<div class="t">' + head + '</div>' +
      '<div class="a" title="' + esc(src[0]) + '">' + esc(src[0]) + '</div>' +
      '<div class="bars">' + bar('p', 'P', compact(human(ms.params)), 'params ' + int(ms.params)) + bar('m', 'M', compact(human(ms.macs)), 'MACs ' + int(ms.macs)) + bar('mem', 'A', compact(bytes(ms.memory)), 'activation memory ' + bytes(ms.memory) + ' per image') + '</div>' +
      '<div class="f">' + foot + src[2] + '<span class="src">' + esc(src[1]) + '</span></div></div>';
  }
  function frameHtml(P, f) {
    if (f.kind === 'se') {
      const s = P.m.se[Number(f.key.slice(3))];
      const w = s.width !== null ? s.width : '?';
      const r = s.width ? Math.round(s.channels / s.width) : '?';
      const label = 'SE · squeeze ' + s.squeeze + ' → ' + s.channels + ' → ' + w + ' (C/r, r≈' + r + ') → ' + s.channels + ' · gate ' + s.gate_fn + ' · scale';
      return '<div class="frame f-se" data-se="' + esc(s.name) + '" style="left:' + f.x + 'px;top:' + f.y + 'px;width:' + f.w + 'px;height:' + f.h + 'px"><div class="fh">' + esc(label) + '</div></div>';
    }
    const g = P.groups.get(f.key);
    const label = g.path + ' · ' + g.template + (g.kind === 'stage' ? ' ×' + g.repeat : '') + ' · ' + human(g.params) + ' params · ' + human(g.macs) + ' MACs  ▴ collapse';
    return '<div class="frame f-' + g.kind + '" data-group="' + esc(g.path) + '" data-open="1" data-params="' + g.params + '" style="left:' + f.x + 'px;top:' + f.y + 'px;width:' + f.w + 'px;height:' + f.h + 'px"><div class="fh" data-toggle="' + esc(g.path) + '">' + esc(label) + '</div></div>';
  }
  function edgeGeom(lay, e) {
    const a = lay.pos[e.u], b = lay.pos[e.v];
    const x1 = a.cx, y1 = a.y + H, x2 = b.cx, y2 = b.y;
    const la = lay.lane[e.u], lb = lay.lane[e.v];
    let d, lx, ly;
    if (la === lb) {
      if (lay.blocked(la, lay.row[e.u], lay.row[e.v])) {
        const xo = x1 - W / 2 - 22;
        d = 'M' + x1 + ',' + y1 + ' C' + x1 + ',' + (y1 + 28) + ' ' + xo + ',' + (y1 + 10) + ' ' + xo + ',' + (y1 + 40) +
          ' L' + xo + ',' + (y2 - 40) + ' C' + xo + ',' + (y2 - 10) + ' ' + x2 + ',' + (y2 - 28) + ' ' + x2 + ',' + y2;
        lx = xo + 4; ly = (y1 + y2) / 2;
      } else {
        d = 'M' + x1 + ',' + y1 + ' L' + x2 + ',' + y2; lx = x1 + 5; ly = y1 + 14;
      }
    } else if (lb === 0 || Math.abs(lb) < Math.abs(la)) {
      const yc = Math.max(y1, y2 - G);
      d = 'M' + x1 + ',' + y1 + ' L' + x1 + ',' + yc + ' C' + x1 + ',' + (yc + y2) / 2 + ' ' + x2 + ',' + (yc + y2) / 2 + ' ' + x2 + ',' + y2;
      if (yc > y1) { lx = x1 + 5; ly = y1 + 14; } else { lx = (x1 + x2) / 2 + 5; ly = (y1 + y2) / 2; }
    } else {
      const yc = Math.min(y2, y1 + G);
      d = 'M' + x1 + ',' + y1 + ' C' + x1 + ',' + (y1 + yc) / 2 + ' ' + x2 + ',' + (y1 + yc) / 2 + ' ' + x2 + ',' + yc + ' L' + x2 + ',' + y2;
      if (yc < y2) { lx = x2 + 5; ly = yc + 14; } else { lx = (x1 + x2) / 2 + 5; ly = (y1 + y2) / 2; }
    }
    return { d, lx, ly, text: e.shapes.join(' | '), se: e.se };
  }
  // Incremental: boxes and edges are kept by their unit's key (`l:ID`, `g:PATH`) from one
  // render to the next; a box whose content is unchanged is only moved, an edge only gets its
  // new path. Only what appeared is parsed and only what went is removed, so the browser lays out
  // the boxes that changed rather than the whole page.
  const SVGNS = 'http://www.w3.org/2000/svg';
  function skeleton(P) {
    P.el.innerHTML = '<div class="frames"></div><div class="ghosts"></div><svg><defs><marker id="arr-' + P.side + '" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#7b8594"/></marker></defs><g class="edges"></g><g class="labels"></g></svg><div class="boxes"></div>';
    P.framesEl = P.el.querySelector('.frames');
    P.ghostsEl = P.el.querySelector('.ghosts');
    P.svg = P.el.querySelector('svg');
    P.edgesEl = P.svg.querySelector('.edges');
    P.labelsEl = P.svg.querySelector('.labels');
    P.boxesEl = P.el.querySelector('.boxes');
    P.boxes = new Map();
    P.html = new Map();
    P.edgeEls = new Map();
  }
  function place(n, x, y) {
    if (n.x !== x) { n.el.style.left = x + 'px'; n.x = x; }
    if (n.y !== y) { n.el.style.top = y + 'px'; n.y = y; }
  }
  function renderGraph(P, depth) {
    const lay = P.lay;
    if (!P.boxes) skeleton(P);
    const max = { params: 0, macs: 0, memory: 0 };
    for (const U of lay.units) { const m = measures(U); for (const k in max) max[k] = Math.max(max[k], m[k]); }
    P.framesEl.innerHTML = lay.frames.slice().sort((a, b) => a.level - b.level).map((f) => frameHtml(P, f)).join('');
    P.ghostsEl.innerHTML = lay.ghosts.map((g) => '<div class="ghost" data-ghost="' + esc(g.name) + '" data-diff="' + g.status + '" style="left:' + g.x + 'px;top:' + g.y + 'px;width:' + W + 'px;height:' + H + 'px">' +
      (g.status === 'added' ? '+ ' : '− ') + esc(g.name) + '<br><span>only in ' + (g.status === 'added' ? 'B' : 'A') + '</span></div>').join('');
    // Boxes.
    for (const el of P.boxesEl.querySelectorAll('.box.sel')) el.classList.remove('sel');
    const tb = performance.now();
    const seen = new Set(), fresh = [];
    for (const U of lay.units) {
      // What a box shows depends on the diff depth only (the data being fixed).
      let memo = P.html.get(U.key);
      if (!memo || memo.depth !== depth) { memo = { depth, html: boxHtml(P, U, depth) }; P.html.set(U.key, memo); }
      const html = memo.html, look = looks(U, max);
      const p = lay.pos[U.i];
      let n = P.boxes.get(U.key);
      seen.add(U.key);
      if (n && n.html !== html) { n.el.remove(); n = null; }
      if (n) { place(n, p.cx - W / 2, p.y); restyle(n, look); }
      else { n = { html, el: null, x: p.cx - W / 2, y: p.y, look }; P.boxes.set(U.key, n); fresh.push(n); }
    }
    for (const [k, n] of P.boxes) if (!seen.has(k)) { n.el.remove(); P.boxes.delete(k); }
    if (fresh.length) {
      const tpl = document.createElement('template');
      tpl.innerHTML = fresh.map((n) => n.html).join('');
      const els = tpl.content.children;
      fresh.forEach((n, i) => { n.el = els[i]; });
      for (const n of fresh) {
        n.el.style.left = n.x + 'px'; n.el.style.top = n.y + 'px';
        const look = n.look;
        n.look = { bars: [], bg: '' };
        restyle(n, look);
      }
      P.boxesEl.appendChild(tpl.content);
    }
    const te = performance.now();
    window.SE_VIEW_TIMINGS.boxes_ms = te - tb;
    // Edges, by the keys of the units they join.
    const eseen = new Set();
    for (const e of lay.edges) {
      const k = lay.units[e.u].key + '>' + lay.units[e.v].key;
      const g = edgeGeom(lay, e);
      eseen.add(k);
      let n = P.edgeEls.get(k);
      if (!n) {
        n = { path: document.createElementNS(SVGNS, 'path'), label: document.createElementNS(SVGNS, 'text') };
        n.path.setAttribute('marker-end', 'url(#arr-' + P.side + ')');
        n.label.setAttribute('class', 'el');
        P.edgesEl.appendChild(n.path);
        P.labelsEl.appendChild(n.label);
        P.edgeEls.set(k, n);
      }
      if (n.d !== g.d) { n.path.setAttribute('d', g.d); n.d = g.d; }
      if (n.se !== g.se) { n.path.setAttribute('class', g.se ? 'edge se' : 'edge'); n.se = g.se; }
      if (n.lx !== g.lx || n.ly !== g.ly) { n.label.setAttribute('x', g.lx); n.label.setAttribute('y', g.ly); n.lx = g.lx; n.ly = g.ly; }
      if (n.text !== g.text) { n.label.textContent = g.text; n.text = g.text; }
    }
    for (const [k, n] of P.edgeEls) if (!eseen.has(k)) { n.path.remove(); n.label.remove(); P.edgeEls.delete(k); }
    window.SE_VIEW_TIMINGS.edges_ms = performance.now() - te;
    P.svg.setAttribute('width', lay.width);
    P.svg.setAttribute('height', lay.height);
    P.el.style.width = lay.width + 'px';
    P.el.style.height = lay.height + 'px';
  }
  function boxEl(P, U) {
    const n = U && P.boxes && P.boxes.get(U.key);
    return n ? n.el : null;
  }

  // ---- side panel ----
  function detailsOf(P, U) {
    const rows = [];
    const add = (k, v) => rows.push('<tr><td>' + esc(k) + '</td><td>' + v + '</td></tr>');
    if (U.group) {
      const g = U.group;
      add(g.kind, '<b>' + esc(g.path) + '</b> (' + esc(g.template) + (g.kind === 'stage' ? ', ×' + g.repeat + ' blocks' : '') + ')');
      add('layers', int(g.layers));
      add('output', esc(shapeText(g.shape)));
      add('params', int(g.params));
      add('MACs', int(g.macs) + ' (' + human(g.macs) + ')');
      add('activations', bytes(g.bytes) + ' per image');
      add('source', '<span class="mono">' + esc(P.m.file) + ':' + g.line + '</span>');
    } else {
      const l = U.layer, L = P.m.layers;
      add('layer', '<b>' + esc(l.name) + '</b> (' + esc(l.type) + ')');
      if (l.config) add('attributes', esc(l.config));
      add('output', esc(shapeText(l.shape)));
      if (l.inputs.length) add('inputs', l.inputs.map((i) => esc(L[i].name) + ' <span class="muted">' + esc(shapeText(L[i].shape)) + '</span>').join('<br>'));
      add('params', int(l.params) + (l.params !== l.trainable ? ' (' + int(l.trainable) + ' trainable)' : ''));
      add('MACs', int(l.macs) + (l.macs ? ' (' + human(l.macs) + ')' : ''));
      add('activations', bytes(l.bytes) + ' per image');
      if (l.block || l.stage) add('in', esc(l.block || l.stage));
      if (l.se !== null && l.se !== undefined) {
        const s = P.m.se[l.se];
        add('SE block', esc(s.name) + ': ' + s.channels + ' → ' + s.width + ' → ' + s.channels + ', gate ' + esc(s.gate_fn) + ' (' + l.se_role + ')');
      }
      add('source', '<span class="mono">' + esc(P.m.file) + ':' + l.line + '</span><br><code>' + esc(l.text) + '</code>');
    }
    const dr = diffRowOf(P, U, currentDepth());
    if (dr) {
      add('diff', dr.status + (dr.status === 'same' ? '' : ': params ' + signed(dr.delta.params, int) + ', MACs ' + signed(dr.delta.macs, human) + ', memory ' + signed(dr.delta.activation_bytes, bytes)));
    }
    return '<div class="muted">' + (MODELS.length > 1 ? (P.side ? 'B: ' : 'A: ') : '') + esc(P.m.model) + '</div><table>' + rows.join('') + '</table>';
  }
  function showDetails(P, U) {
    document.getElementById('details-body').innerHTML = detailsOf(P, U);
    document.getElementById('details-body').className = '';
  }
  // The summary of the boxes shown: rows kept by unit key as the graph's boxes are, each laid
  // out only when scrolled into view (a grid of divs, not a table, which relays out whole).
  function summaryTable(P, body) {
    if (!P.rows || !P.rowsEl.isConnected) {
      body.innerHTML = '<div class="stbl" id="summary-table"><div class="srow sh"><span>Name</span><span>Type</span><span>Output</span><span>Params</span><span>MACs</span><span>Act. mem</span></div><div class="srows"></div><div class="srow total"></div></div>';
      P.rows = new Map();
      P.rowsEl = body.querySelector('.srows');
      const t = P.m.totals;
      body.querySelector('.srow.total').innerHTML = '<span>Total</span><span></span><span></span><span title="' + int(t.params) + '">' + HN(t.params) + '</span><span>' + HN(t.macs) + '</span><span>' + BN(t.bytes) + '</span>';
    }
    const lay = P.lay;
    const order = lay.units.slice().sort((a, b) => lay.row[a.i] - lay.row[b.i] || lay.lane[a.i] - lay.lane[b.i]);
    const want = new Set(order.map((U) => U.key)), fresh = [];
    for (const [k, el] of P.rows) if (!want.has(k)) { el.remove(); P.rows.delete(k); }
    for (const U of order) {
      if (P.rows.has(U.key)) continue;
      const s = U.group || U.layer;
      const name = U.group ? U.group.path : U.layer.name;
      const type = U.group ? U.group.template + (U.group.kind === 'stage' ? ' ×' + U.group.repeat : '') : U.layer.type;
      fresh.push([U.key, '<div class="srow" data-row="' + esc(name) + '" data-key="' + esc(U.key) + '"><span>' + esc(name) + '</span><span>' + esc(type) + '</span><span>' + esc(shapeText(s.shape)) + '</span><span title="' + int(s.params) + '">' + HN(s.params) + '</span><span title="' + int(s.macs) + '">' + HN(s.macs) + '</span><span>' + BN(s.bytes) + '</span></div>']);
    }
    if (fresh.length) {
      const tpl = document.createElement('template');
      tpl.innerHTML = fresh.map((f) => f[1]).join('');
      [...tpl.content.children].forEach((el, i) => P.rows.set(fresh[i][0], el));
    }
    // In order, moving only the rows out of place (an expanded group's rows are one run).
    let cur = P.rowsEl.firstElementChild;
    for (const U of order) {
      const el = P.rows.get(U.key);
      if (el === cur) cur = cur.nextElementSibling;
      else P.rowsEl.insertBefore(el, cur);
    }
  }
  function diffTable(depth) {
    const t = DIFF[depth];
    const mark = { same: '', changed: '~', added: '+', removed: '-' };
    const out = ['<div class="muted">B against A, aligned as <code>se-compile diff --depth ' + depth + '</code> aligns them.</div><table class="tbl" id="diff-table" data-depth="' + depth + '"><colgroup><col style="width:3%"><col style="width:25%"><col style="width:12%"><col style="width:12%"><col style="width:13%"><col style="width:10%"><col style="width:13%"><col style="width:12%"></colgroup><thead><tr><th></th><th class="l">Name</th><th>Params A</th><th>Params B</th><th>Δ</th><th>%</th><th>MACs Δ</th><th>Mem Δ</th></tr></thead><tbody>'];
    for (const r of t.rows) {
      const nm = r.name_b ? r.name + ' / ' + r.name_b : r.name;
      out.push('<tr class="st-' + r.status + '" data-diff-row="' + esc(r.name) + '" data-status="' + r.status + '"><td>' + mark[r.status] + '</td><td class="l">' + esc(nm) + ' <span class="muted">' + esc(r.type) + '</span></td><td title="' + (r.a ? int(r.a.params) : '') + '">' + (r.a ? HN(r.a.params) : '') + '</td><td title="' + (r.b ? int(r.b.params) : '') + '">' + (r.b ? HN(r.b.params) : '') + '</td><td title="' + signed(r.delta.params, int) + '">' + signed(r.delta.params, HN) + '</td><td>' + pctText(r.pct.params) + '</td><td>' + signed(r.delta.macs, HN) + '</td><td>' + signed(r.delta.activation_bytes, BN) + '</td></tr>');
    }
    const tt = t.totals;
    out.push('<tr class="total"><td></td><td class="l">Total</td><td>' + HN(tt.a.params) + '</td><td>' + HN(tt.b.params) + '</td><td>' + signed(tt.delta.params, HN) + '</td><td>' + pctText(tt.pct.params) + '</td><td>' + signed(tt.delta.macs, HN) + '</td><td>' + signed(tt.delta.activation_bytes, BN) + '</td></tr></tbody></table>');
    const n = (s) => t.rows.filter((r) => r.status === s).length;
    out.push('<p class="muted">' + t.rows.length + ' rows per ' + depth + ': ' + n('same') + ' same, ' + n('changed') + ' changed (~), ' + n('added') + ' only in B (+), ' + n('removed') + ' only in A (−)</p>');
    return out.join('');
  }
  function renderPanel(depth) {
    const title = document.getElementById('table-title');
    const body = document.getElementById('table-body');
    if (DIFF) { title.textContent = 'Diff per ' + depth; body.innerHTML = diffTable(depth); }
    else { title.textContent = 'Summary of the boxes shown'; summaryTable(MODELS[0], body); }
  }
  function chart(title, xs, series) {
    const w = 390, h = 170, l = 44, r = 10, t = 18, b = 24;
    let lo = Infinity, hi = -Infinity;
    for (const s of series) for (const v of s.ys) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!isFinite(lo)) return '';
    if (hi === lo) { hi += 0.5; lo -= 0.5; }
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    const X = (x) => l + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (w - l - r);
    const Y = (y) => t + (1 - (y - lo) / (hi - lo)) * (h - t - b);
    const out = ['<svg class="chart" width="' + w + '" height="' + h + '" data-chart="' + esc(title) + '"><text x="' + l + '" y="12" font-weight="600">' + esc(title) + '</text>'];
    out.push('<line class="ax" x1="' + l + '" y1="' + (h - b) + '" x2="' + (w - r) + '" y2="' + (h - b) + '"/><line class="ax" x1="' + l + '" y1="' + t + '" x2="' + l + '" y2="' + (h - b) + '"/>');
    for (const v of [lo, (lo + hi) / 2, hi]) out.push('<text x="' + (l - 4) + '" y="' + (Y(v) + 3) + '" text-anchor="end">' + (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)) + '</text>');
    out.push('<text x="' + X(x0) + '" y="' + (h - 8) + '">' + x0 + '</text><text x="' + X(x1) + '" y="' + (h - 8) + '" text-anchor="end">epoch ' + x1 + '</text>');
    series.forEach((s, k) => {
      const pts = xs.map((x, i) => (s.ys[i] === null ? null : X(x).toFixed(1) + ',' + Y(s.ys[i]).toFixed(1))).filter(Boolean).join(' ');
      out.push('<polyline class="s' + (k % 4) + '" points="' + pts + '"/>');
      out.push('<text x="' + (w - r - 4) + '" y="' + (t + 12 + 12 * k) + '" text-anchor="end" class="s' + (k % 4) + '" style="fill:currentColor">' + esc(s.name) + '</text>');
    });
    out.push('</svg>');
    return out.join('');
  }
  function renderRun() {
    const run = DATA.run;
    if (!run) return;
    document.getElementById('run').hidden = false;
    const col = (n) => run.columns.indexOf(n);
    const ei = col('epoch');
    const xs = run.rows.map((r, i) => (r[ei] === null ? i + 1 : r[ei]));
    const series = (names) => names.filter((n) => col(n) >= 0).map((n) => ({ name: n, ys: run.rows.map((r) => r[col(n)]) }));
    const parts = ['<div class="muted mono">' + esc(run.dir) + '/history.csv · ' + run.rows.length + ' epochs</div>'];
    const groups = [['loss', 'val_loss'], ['accuracy', 'val_accuracy'], ['lr']];
    const used = new Set(['epoch', 'seconds']);
    for (const g of groups) { const s = series(g); g.forEach((n) => used.add(n)); if (s.length) parts.push(chart(g.join(' / '), xs, s)); }
    for (const n of run.columns) if (!used.has(n)) parts.push(chart(n, xs, series([n])));
    if (run.excitations.length) parts.push('<div class="muted">Excitations from ' + esc(run.dir) + '/excitations.json: each SE block\'s mean excitation per channel is drawn in its box.</div>');
    document.getElementById('run-body').innerHTML = parts.join('');
  }

  // ---- everything ----
  function render(scroll) {
    const t = performance.now();
    if (!MODELS.length) { window.SE_VIEW_TIMINGS.renders += 1; return; } // served, no good spec yet
    const depth = currentDepth();
    for (const P of MODELS) P.lay = layout(P);
    if (MODELS.length === 2 && DMAPS) alignRows(MODELS[0], MODELS[1]);
    else for (const P of MODELS) placeAlone(P.lay);
    window.SE_VIEW_TIMINGS.layout_ms = performance.now() - t;
    for (const P of MODELS) renderGraph(P, depth);
    const t1 = performance.now();
    renderPanel(depth);
    const t2 = performance.now();
    document.getElementById('color').value = state.color;
    if (state.layer) selectLayer(state.layer, scroll === true);
    writeHash();
    document.body.getBoundingClientRect(); // lay the page out: the timing includes the browser's layout
    const T = window.SE_VIEW_TIMINGS, t3 = performance.now();
    T.render_ms = t3 - t; T.graph_ms = t1 - t; T.panel_ms = t2 - t1; T.browser_layout_ms = t3 - t2;
    window.SE_VIEW_TIMINGS.renders += 1;
  }
  function findUnit(P, name) {
    const l = P.byName.get(name);
    if (!l || !P.lay) return null;
    return P.lay.units.find((U) => U.layer === l) || null;
  }
  function selectLayer(name, scroll) {
    let found = false;
    for (const P of MODELS) {
      const l = P.byName.get(name);
      if (!l) continue;
      found = true;
      if ((l.stage && !isOpen(l.stage)) || (l.block && !isOpen(l.block))) {
        if (l.block) openPath(l.block); else openPath(l.stage);
        state.layer = name;
        render(scroll);
        return true;
      }
      for (const el of P.el.querySelectorAll('.box.sel')) el.classList.remove('sel');
      const U = findUnit(P, name);
      const el = boxEl(P, U);
      if (el) {
        el.classList.add('sel');
        if (P.side === 0) { showDetails(P, U); if (scroll !== false) el.scrollIntoView({ block: 'center', inline: 'center' }); }
      }
    }
    if (!found) document.getElementById('details-body').innerHTML = '<span class="muted">No layer named <b>' + esc(name) + '</b>.</span>';
    return found;
  }
  function toggleGroup(path) {
    if (isOpen(path)) {
      if (state.all) { state.all = false; state.expand = new Set(ALL_GROUPS); }
      state.expand.delete(path);
      for (const p of ALL_GROUPS) { for (let q = PARENT.get(p); q; q = PARENT.get(q)) if (q === path) state.expand.delete(p); }
    } else openPath(path);
    render();
  }

  // The bar's title and totals and one column per model: anew for each data.
  function mount() {
    const title = MODELS.map((P) => P.m.model).join(' vs ');
    document.getElementById('title').textContent = title;
    document.getElementById('generator').textContent = DATA.generator;
    document.getElementById('macs-convention').textContent = DATA.macs_convention;
    const t = MODELS.length ? MODELS[0].m.totals : null;
    document.getElementById('totals').textContent = !t ? '' : MODELS.length > 1
      ? MODELS.map((P) => (P.side ? 'B ' : 'A ') + int(P.m.totals.params) + ' params, ' + human(P.m.totals.macs) + ' MACs').join(' · ')
      : MODELS[0].m.layers.length + ' layers · ' + int(t.params) + ' params · ' + human(t.macs) + ' MACs · ' + bytes(t.bytes) + ' activations/image';
    const graphs = document.getElementById('graphs');
    graphs.textContent = '';
    for (const P of MODELS) {
      const col = document.createElement('div');
      col.className = 'graph-col';
      col.dataset.side = P.side ? 'B' : 'A';
      if (MODELS.length > 1) {
        const h = document.createElement('div');
        h.className = 'graph-head';
        h.textContent = (P.side ? 'B: ' : 'A: ') + P.m.model + ' (' + P.m.file + ')';
        col.appendChild(h);
      }
      P.el = document.createElement('div');
      P.el.className = 'graph';
      P.el.dataset.model = P.m.model;
      col.appendChild(P.el);
      graphs.appendChild(col);
      P.el.addEventListener('click', (ev) => {
        const tog = ev.target.closest('[data-toggle]');
        if (tog) { toggleGroup(tog.dataset.toggle); return; }
        const box = ev.target.closest('.box');
        if (!box) return;
        const U = P.lay.byKey.get(box.dataset.key);
        if (U.group) { toggleGroup(U.group.path); return; }
        state.layer = U.layer.name;
        selectLayer(U.layer.name, false);
        showDetails(P, U);
        writeHash();
      });
      P.el.addEventListener('mouseover', (ev) => {
        const box = ev.target.closest('.box');
        if (box) showDetails(P, P.lay.byKey.get(box.dataset.key));
      });
    }
  }
  function init() {
    window.SE_VIEW_TIMINGS = { render_ms: 0, renders: 0, load_ms: 0, ready_ms: 0 };
    prepare(JSON.parse(document.getElementById('se-view-data').textContent));
    mount();
    document.getElementById('table-body').addEventListener('click', (ev) => {
      const tr = ev.target.closest('[data-key], tr[data-diff-row]');
      if (!tr) return;
      const P = MODELS[0];
      const U = tr.dataset.key !== undefined ? P.lay.byKey.get(tr.dataset.key) : P.lay.units.find((u) => (u.group ? u.group.path : u.layer.name) === tr.dataset.diffRow);
      if (!U) return;
      const el = boxEl(P, U);
      if (el) { el.scrollIntoView({ block: 'center', inline: 'center' }); showDetails(P, U); }
    });
    document.getElementById('expand-all').addEventListener('click', () => { state.all = true; render(); });
    document.getElementById('collapse-all').addEventListener('click', () => { state.all = false; state.expand = new Set(); state.layer = null; render(); });
    document.getElementById('color').addEventListener('change', (ev) => { state.color = ev.target.value; render(); });
    const about = document.getElementById('about');
    document.getElementById('about-btn').addEventListener('click', () => { about.hidden = !about.hidden; });
    document.getElementById('about-close').addEventListener('click', () => { about.hidden = true; });
    const search = document.getElementById('search'), results = document.getElementById('search-results');
    const matches = () => {
      const q = search.value.trim().toLowerCase();
      if (!q) return [];
      const out = [];
      for (const P of MODELS) for (const l of P.m.layers) if (l.name.toLowerCase().includes(q) && !out.includes(l.name)) out.push(l.name);
      return out;
    };
    search.addEventListener('input', () => {
      const ms = matches();
      results.hidden = !ms.length;
      results.innerHTML = ms.slice(0, 50).map((n) => '<div data-name="' + esc(n) + '">' + esc(n) + '</div>').join('') + (ms.length > 50 ? '<div class="muted">… ' + (ms.length - 50) + ' more</div>' : '');
    });
    search.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { const ms = matches(); if (ms.length) { results.hidden = true; goTo(ms[0]); } }
      if (ev.key === 'Escape') results.hidden = true;
    });
    results.addEventListener('click', (ev) => {
      const d = ev.target.closest('[data-name]');
      if (d) { results.hidden = true; goTo(d.dataset.name); }
    });
    window.addEventListener('hashchange', () => {
      if (location.hash === lastHash) return;
      readHash(); render(true);
    });
    readHash();
    renderRun();
    render(true);
    window.SE_VIEW_TIMINGS.load_ms = performance.now() - T0;
    // Since the navigation began: the HTML and the data parsed, the graph drawn and laid out.
    window.SE_VIEW_TIMINGS.ready_ms = performance.now();
    if (DATA.serve) watch();
  }
  // ---- `se-compile view --serve` ----
  // The server counts its changes (`version`) and, apart, those of the graph (`graph`): the
  // page polls /version and, when it moved, fetches /data. New data is drawn in place, with the
  // view's state (fragment, selection, scroll) kept; diagnostics of an invalid spec are shown
  // above the last good graph, which stays.
  function showDiagnostics(text) {
    const d = document.getElementById('diagnostics');
    d.hidden = !text;
    d.textContent = text || '';
  }
  function applyServed(data) {
    const sv = data.serve;
    if (sv.graph !== DATA.serve.graph && data.models.length) {
      const graphs = document.getElementById('graphs');
      const [x, y] = [graphs.scrollLeft, graphs.scrollTop];
      prepare(data);
      mount();
      renderRun();
      render(false);
      graphs.scrollLeft = x; graphs.scrollTop = y;
    }
    DATA.serve = sv;
    showDiagnostics(sv.diagnostics);
    window.SE_VIEW_TIMINGS.served = sv.version;
  }
  function watch() {
    showDiagnostics(DATA.serve.diagnostics);
    window.SE_VIEW_TIMINGS.served = DATA.serve.version;
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      try {
        const v = Number(await (await fetch('/version', { cache: 'no-store' })).text());
        if (v !== DATA.serve.version) applyServed(await (await fetch('/data', { cache: 'no-store' })).json());
        document.getElementById('title').classList.remove('gone');
      } catch (e) {
        // The server stopped: the page stays as it is, and says so.
        document.getElementById('title').classList.add('gone');
      } finally {
        busy = false;
      }
    };
    setInterval(tick, 250);
  }
  function goTo(name) {
    state.layer = name;
    selectLayer(name, true);
    writeHash();
  }
  // For tests and users' scripts: the view's state and actions.
  window.seView = {
    get data() { return DATA; },
    state: () => ({ all: state.all, expand: [...state.expand], layer: state.layer, color: state.color, depth: currentDepth() }),
    expandAll: () => { state.all = true; render(); },
    collapseAll: () => { state.all = false; state.expand = new Set(); render(); },
    toggle: toggleGroup,
    goTo,
  };
  init();
})();
