// Dockyard console — hand-written vanilla JS, no dependencies.
// All API data is rendered with textContent / setAttribute, never innerHTML.
'use strict';
(function () {
  const OVERVIEW_MS = 1000;
  const TRACES_MS = 2000;
  const TIMEOUT_MS = 5000;
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') node.textContent = v;
      else if (k === 'class') node.className = v;
      else if (k === 'style') setStyle(node, v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) node.append(c);
    return node;
  }

  // `prop:value;…` through the CSSOM: the page's CSP (style-src 'self') refuses style
  // attributes, not properties set from a script it allows.
  function setStyle(node, declarations) {
    for (const declaration of String(declarations).split(';')) {
      const at = declaration.indexOf(':');
      if (at > 0) node.style.setProperty(declaration.slice(0, at).trim(), declaration.slice(at + 1).trim());
    }
  }

  function setText(node, text) {
    const s = String(text);
    if (node.textContent !== s) node.textContent = s;
  }

  function setAttr(node, name, value) {
    const s = String(value);
    if (node.getAttribute(name) !== s) node.setAttribute(name, s);
  }

  // Put `node` at position `index` of `parent` without touching it when it is already there
  // (moving a node would blur a focused descendant).
  function placeAt(parent, node, index) {
    if (parent.children[index] !== node) parent.insertBefore(node, parent.children[index] || null);
  }

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const fmtInt = (v) => (isNum(v) ? String(Math.round(v)) : '–');
  const fmtRate = (v) => (isNum(v) ? (v < 10 ? v.toFixed(1) : v.toFixed(0)) : '–');
  const fmtPct = (v) => (isNum(v) ? (v * 100).toFixed(v > 0 && v < 0.1 ? 2 : 1) + '%' : '–');
  const fmtMs = (v) => (isNum(v) ? (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + ' ms' : '–');
  function fmtTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso || '') : d.toLocaleTimeString([], { hour12: false });
  }

  async function api(path, opts) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    const init = { method: 'GET', headers: { Accept: 'application/json' }, signal: ctl.signal };
    if (opts && opts.body !== undefined) {
      init.method = opts.method || 'PUT';
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    try {
      const res = await fetch(path, init);
      const text = await res.text();
      let body = null;
      try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
      if (!res.ok) {
        const detail = body && (body.detail || body.title);
        const err = new Error(detail ? String(detail) : `HTTP ${res.status}`);
        err.status = res.status;
        throw err;
      }
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  // A fetch "fails" (for the banner) on network errors, timeouts and 5xx answers.
  const isBackendFailure = (err) => !err.status || err.status >= 500;

  // ------------------------------------------------------------ sparklines
  function sparkline(label) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', '0 0 100 24');
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    const title = document.createElementNS(SVG_NS, 'title');
    const area = document.createElementNS(SVG_NS, 'path');
    const line = document.createElementNS(SVG_NS, 'path');
    area.setAttribute('class', 'spark-area');
    line.setAttribute('class', 'spark-line');
    line.setAttribute('vector-effect', 'non-scaling-stroke');
    svg.append(title, area, line);
    function update(values, intervalS) {
      const vs = Array.isArray(values) ? values : [];
      const nums = vs.filter(isNum);
      const max = Math.max(0, ...nums) || 1;
      const n = vs.length;
      let d = '';
      let a = '';
      let runStart = null;
      let prevX = 0;
      vs.forEach((v, i) => {
        const x = n > 1 ? (i / (n - 1)) * 100 : 100;
        if (!isNum(v)) {
          if (runStart !== null) a += `L${prevX.toFixed(2)},24L${runStart.toFixed(2)},24Z`;
          runStart = null;
          return;
        }
        const y = 23 - (v / max) * 21;
        const pt = `${x.toFixed(2)},${y.toFixed(2)}`;
        if (runStart === null) { d += `M${pt}`; a += `M${pt}`; runStart = x; } else { d += `L${pt}`; a += `L${pt}`; }
        prevX = x;
      });
      if (runStart !== null) a += `L${prevX.toFixed(2)},24L${runStart.toFixed(2)},24Z`;
      line.setAttribute('d', d);
      area.setAttribute('d', a);
      const span = intervalS ? `, last ${Math.round(n * intervalS)} s` : '';
      title.textContent = `${label}${span}, max ${fmtRate(nums.length ? max : null)}`;
    }
    return { root: svg, update };
  }

  // ---------------------------------------------------------------- banner
  const failing = new Set();
  function setFailing(source, failed, err) {
    if (failed) failing.add(source); else failing.delete(source);
    const slot = $('banner-slot');
    let banner = slot.querySelector('[data-testid="backend-unreachable"]');
    if (failing.size === 0) { if (banner) banner.remove(); return; }
    if (!banner) {
      banner = el('div', { class: 'banner', 'data-testid': 'backend-unreachable', role: 'alert' },
        el('strong', { text: 'console backend unreachable' }), el('span', { class: 'banner-detail' }));
      slot.append(banner);
    }
    if (err) setText(banner.querySelector('.banner-detail'), ` — ${err.message || err}; retrying…`);
  }

  // -------------------------------------------------------------- topology
  const routeViews = new Map(); // route -> view
  const putDoneAt = new Map(); // route -> time a PUT answer was applied (stale-poll guard)

  function routeView(name) {
    let v = routeViews.get(name);
    if (v) return v;
    const title = el('h3', { text: name });
    const meta = el('span', { class: 'route-meta' });
    const pools = el('div', { class: 'pools' });
    const section = el('section', { class: 'route', 'data-testid': 'route', 'data-route': name },
      el('header', { class: 'route-head' }, title, meta), pools);
    v = { section, meta, pools, poolViews: new Map() };
    routeViews.set(name, v);
    return v;
  }

  function poolView(rv, route, pool) {
    let v = rv.poolViews.get(pool);
    if (v) return v;
    const activeBadge = el('span', { class: 'badge badge-active', text: 'active' });
    const breaker = el('span', { class: 'badge breaker' });
    const cards = el('div', { class: 'cards' });
    const empty = el('p', { class: 'muted empty', text: 'no instances' });
    const root = el('div', { class: `pool pool-${pool}`, 'data-pool': pool, 'data-route': route },
      el('header', { class: 'pool-head' }, el('span', { class: 'pool-name', text: pool }), activeBadge, breaker),
      cards, empty);
    v = { root, activeBadge, breaker, cards, empty, cardViews: new Map() };
    rv.poolViews.set(pool, v);
    return v;
  }

  function metric(dl, label) {
    const dd = el('dd');
    dl.append(el('div', {}, el('dt', { text: label }), dd));
    return dd;
  }

  function cardView(pv, route, pool, url) {
    let v = pv.cardViews.get(url);
    if (v) return v;
    const state = el('span', { class: 'state-badge' });
    const dl = el('dl', { class: 'metrics' });
    const m = {
      inFlight: metric(dl, 'in-flight'), rps: metric(dl, 'req/s'), err: metric(dl, 'errors'),
      p50: metric(dl, 'p50'), p99: metric(dl, 'p99'),
    };
    const sRps = sparkline('req/s');
    const sP99 = sparkline('p99 ms');
    const root = el('article', { class: 'card', 'data-testid': 'instance', 'data-url': url, 'data-pool': pool, 'data-route': route },
      el('header', { class: 'card-head' }, el('span', { class: 'url', text: url, title: url }), state),
      dl,
      el('div', { class: 'card-sparks' },
        el('div', { class: 'spark-box' }, el('span', { class: 'spark-label', text: 'req/s' }), sRps.root),
        el('div', { class: 'spark-box' }, el('span', { class: 'spark-label', text: 'p99' }), sP99.root)));
    v = { root, state, m, sRps, sP99 };
    pv.cardViews.set(url, v);
    return v;
  }

  function updateCard(v, inst, intervalS) {
    const state = String(inst.state || 'unknown');
    setAttr(v.root, 'data-state', state);
    v.root.className = `card state-${state}`;
    setText(v.state, state);
    setText(v.m.inFlight, fmtInt(inst.in_flight));
    setText(v.m.rps, fmtRate(inst.rps));
    setText(v.m.err, fmtPct(inst.error_rate));
    v.m.err.classList.toggle('bad', isNum(inst.error_rate) && inst.error_rate >= 0.01);
    setText(v.m.p50, fmtMs(inst.p50_ms));
    setText(v.m.p99, fmtMs(inst.p99_ms));
    const h = inst.history || {};
    v.sRps.update(h.rps, intervalS);
    v.sP99.update(h.p99_ms, intervalS);
  }

  function updateRoute(r, intervalS) {
    const rv = routeView(r.route);
    const bits = [r.prefix || '', `active: ${r.active || '–'}`];
    if (r.canary_weight !== null && r.canary_weight !== undefined) bits.push(`canary ${r.canary_weight}%`);
    setText(rv.meta, bits.join(' · '));
    const seenPools = new Set();
    (r.pools || []).forEach((p, pi) => {
      seenPools.add(p.pool);
      const pv = poolView(rv, r.route, p.pool);
      placeAt(rv.pools, pv.root, pi);
      pv.root.classList.toggle('is-active', !!p.active);
      pv.activeBadge.hidden = !p.active;
      const breaker = String(p.breaker || 'closed');
      setText(pv.breaker, `breaker ${breaker}`);
      pv.breaker.className = `badge breaker breaker-${breaker}`;
      const seen = new Set();
      (p.instances || []).forEach((inst, i) => {
        seen.add(inst.url);
        const cv = cardView(pv, r.route, p.pool, inst.url);
        placeAt(pv.cards, cv.root, i);
        updateCard(cv, inst, intervalS);
      });
      for (const [url, cv] of pv.cardViews) if (!seen.has(url)) { cv.root.remove(); pv.cardViews.delete(url); }
      pv.empty.hidden = seen.size > 0;
    });
    for (const [name, pv] of rv.poolViews) if (!seenPools.has(name)) { pv.root.remove(); rv.poolViews.delete(name); }
    updateRelease(r);
  }

  // ------------------------------------------------------- release controls
  const releaseViews = new Map();

  function releaseView(route) {
    let v = releaseViews.get(route);
    if (v) return v;
    const row = el('div', { class: 'release-row', 'data-route': route },
      el('h3', { text: route }));
    const status = el('span', { class: 'release-status muted', role: 'status' });
    const none = el('p', { class: 'muted', text: 'no canary or green pool' });
    row.append(none, status);
    v = { row, status, none, canary: null, bg: null, confirmed: null, dirty: false, pending: false, bgPending: false };
    releaseViews.set(route, v);
    return v;
  }

  function showStatus(v, text, bad) {
    setText(v.status, text);
    v.status.classList.toggle('bad', !!bad);
  }

  function canaryControl(v, route) {
    const slider = el('input', { type: 'range', min: 0, max: 100, step: 1, 'data-testid': 'canary-weight', 'data-route': route, 'aria-label': `${route} canary weight` });
    const value = el('output', { class: 'weight-value', 'data-testid': 'canary-weight-value', 'data-route': route });
    const preview = el('span', { class: 'weight-preview muted' });
    const root = el('div', { class: 'canary-control' },
      el('label', { class: 'control-label', text: 'canary weight' }), slider,
      el('span', { class: 'weight' }, value, '%'), preview);
    const settle = () => { if (!v.pending && slider.value === String(v.confirmed)) { v.dirty = false; setText(preview, ''); } };
    slider.addEventListener('input', () => { v.dirty = true; setText(preview, `→ ${slider.value}`); });
    slider.addEventListener('pointerup', settle);
    slider.addEventListener('blur', settle);
    slider.addEventListener('change', async () => {
      const weight = Number(slider.value);
      v.pending = true;
      showStatus(v, `applying ${weight}%…`);
      try {
        const r = await api(`/api/routes/${encodeURIComponent(route)}/canary`, { body: { weight } });
        v.pending = false; v.dirty = false;
        setText(preview, '');
        showStatus(v, `canary weight set to ${r.canary_weight}%`);
        applyRouteAnswer(r);
      } catch (err) {
        v.pending = false; v.dirty = false;
        setText(preview, '');
        if (v.confirmed !== null) slider.value = String(v.confirmed);
        showStatus(v, `canary update failed: ${err.message}`, true);
      }
    });
    return { root, slider, value };
  }

  function blueGreenControl(v, route) {
    const mk = (pool) => el('button', { type: 'button', class: `pool-btn pool-btn-${pool}`, 'data-testid': 'active-pool', 'data-route': route, 'data-pool': pool, 'aria-pressed': 'false', text: pool });
    const blue = mk('blue');
    const green = mk('green');
    const root = el('div', { class: 'bg-control' }, el('span', { class: 'control-label', text: 'active pool' }),
      el('span', { class: 'segmented', role: 'group', 'aria-label': `${route} active pool` }, blue, green));
    for (const btn of [blue, green]) {
      btn.addEventListener('click', async () => {
        const pool = btn.getAttribute('data-pool');
        if (btn.getAttribute('aria-pressed') === 'true' || v.bgPending) return;
        v.bgPending = true;
        blue.disabled = green.disabled = true;
        showStatus(v, `switching to ${pool}…`);
        try {
          const r = await api(`/api/routes/${encodeURIComponent(route)}/active`, { body: { pool } });
          v.bgPending = false;
          showStatus(v, `active pool is ${r.active}`);
          applyRouteAnswer(r);
        } catch (err) {
          v.bgPending = false;
          showStatus(v, `switch failed: ${err.message}`, true);
        } finally {
          blue.disabled = green.disabled = false;
        }
      });
    }
    return { root, blue, green };
  }

  function updateRelease(r) {
    const v = releaseView(r.route);
    const hasCanary = r.canary_weight !== null && r.canary_weight !== undefined;
    if (hasCanary && !v.canary) { v.canary = canaryControl(v, r.route); v.row.insertBefore(v.canary.root, v.none); }
    if (!hasCanary && v.canary) { v.canary.root.remove(); v.canary = null; }
    if (r.has_green && !v.bg) { v.bg = blueGreenControl(v, r.route); v.row.insertBefore(v.bg.root, v.none); }
    if (!r.has_green && v.bg) { v.bg.root.remove(); v.bg = null; }
    v.none.hidden = hasCanary || !!r.has_green;
    if (v.canary && !v.pending) {
      v.confirmed = r.canary_weight;
      setText(v.canary.value, String(r.canary_weight));
      if (!v.dirty) v.canary.slider.value = String(r.canary_weight);
    }
    if (v.bg) {
      setAttr(v.bg.blue, 'aria-pressed', r.active === 'blue');
      setAttr(v.bg.green, 'aria-pressed', r.active === 'green');
    }
  }

  function applyRouteAnswer(r) {
    if (!r || !r.route) return;
    putDoneAt.set(r.route, performance.now());
    updateRoute(r, lastIntervalS);
  }

  // ------------------------------------------------------------------ saga
  const sagaRows = new Map();
  const sagaConfirmed = sparkline('confirmed/s');
  const sagaPending = sparkline('pending');
  $('saga-spark-confirmed').append(sagaConfirmed.root);
  $('saga-spark-pending').append(sagaPending.root);

  function updateSaga(s, intervalS) {
    if (!s) return;
    for (const k of ['placed', 'confirmed', 'rejected', 'cancelled', 'pending', 'shed']) {
      setText(document.querySelector(`[data-testid="saga-${k}"]`), fmtInt(s[k]));
    }
    const backlog = s.outbox_backlog || {};
    const dead = s.dead_letters || {};
    const services = [...new Set([...Object.keys(backlog), ...Object.keys(dead)])].sort();
    const tbody = $('saga-services');
    services.forEach((svc, i) => {
      let row = sagaRows.get(svc);
      if (!row) {
        row = { tr: el('tr', { 'data-service': svc }), backlog: el('td', { class: 'num' }), dead: el('td', { class: 'num' }) };
        row.tr.append(el('td', { text: svc }), row.backlog, row.dead);
        sagaRows.set(svc, row);
      }
      placeAt(tbody, row.tr, i);
      setText(row.backlog, fmtInt(backlog[svc]));
      setText(row.dead, fmtInt(dead[svc]));
      row.dead.classList.toggle('bad', isNum(dead[svc]) && dead[svc] > 0);
    });
    for (const [svc, row] of sagaRows) if (!services.includes(svc)) { row.tr.remove(); sagaRows.delete(svc); }
    const h = s.history || {};
    sagaConfirmed.update(h.confirmed_per_s, intervalS);
    sagaPending.update(h.pending, intervalS);
    const last = (a) => (Array.isArray(a) && a.length ? a[a.length - 1] : null);
    setText($('saga-confirmed-rate'), fmtRate(last(h.confirmed_per_s)));
    setText($('saga-pending-now'), fmtInt(last(h.pending)));
  }

  // -------------------------------------------------------------- overview
  let lastIntervalS = 2;

  function renderOverview(ov, startedAt) {
    lastIntervalS = ov.history_interval_s || lastIntervalS;
    setText($('generated-at'), ov.generated_at ? `updated ${fmtTime(ov.generated_at)}` : '');
    const gw = ov.gateway || {};
    const gwEl = $('gateway-status');
    setText(gwEl, gw.reachable ? 'gateway admin API reachable' : `gateway admin API unreachable${gw.error ? ': ' + gw.error : ''}`);
    gwEl.className = `gateway-status ${gw.reachable ? 'ok' : 'bad'}`;

    const wrap = $('routes');
    const placeholder = wrap.querySelector('.placeholder');
    if (placeholder) placeholder.remove();
    const seen = new Set();
    (ov.routes || []).forEach((r, i) => {
      seen.add(r.route);
      // Skip a route whose poll started before a PUT answer was applied (it would be stale).
      if (!((putDoneAt.get(r.route) || 0) > startedAt)) updateRoute(r, lastIntervalS);
      placeAt(wrap, routeView(r.route).section, i);
      placeAt($('release-controls'), releaseView(r.route).row, i);
    });
    for (const [name, rv] of routeViews) {
      if (seen.has(name)) continue;
      rv.section.remove(); routeViews.delete(name);
      const relv = releaseViews.get(name);
      if (relv) { relv.row.remove(); releaseViews.delete(name); }
    }
    updateSaga(ov.saga, lastIntervalS);
  }

  async function pollOverview() {
    const startedAt = performance.now();
    try {
      const ov = await api('/api/overview');
      setFailing('overview', false);
      renderOverview(ov || {}, startedAt);
    } catch (err) {
      if (isBackendFailure(err)) setFailing('overview', true, err);
      else console.warn('overview:', err.message);
    }
  }

  // ---------------------------------------------------------------- traces
  const traceRows = new Map();
  let query = '';
  let openForOrder = null; // order id whose trace should be opened once it is listed
  let tracesSeq = 0;
  let openTraceId = null;
  let openSignature = '';
  let waterfallSeq = 0;

  function traceRow(id) {
    let v = traceRows.get(id);
    if (v) return v;
    const cells = {
      root: el('td', { class: 'root' }), services: el('td', { class: 'services' }), spans: el('td', { class: 'num' }),
      duration: el('td', { class: 'num' }), order: el('td', { class: 'order-id mono' }),
    };
    const tr = el('tr', { 'data-testid': 'trace', 'data-trace-id': id, tabindex: 0 },
      cells.root, cells.services, cells.spans, cells.duration, cells.order);
    const open = () => {
      if (location.hash !== `#trace=${id}`) location.hash = `trace=${id}`; else showTrace(id);
    };
    tr.addEventListener('click', open);
    tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); open(); } });
    v = { tr, cells };
    traceRows.set(id, v);
    return v;
  }

  function renderTraces(list) {
    const tbody = $('trace-rows');
    const seen = new Set();
    list.forEach((t, i) => {
      if (!t || !t.trace_id || seen.has(t.trace_id)) return;
      seen.add(t.trace_id);
      const v = traceRow(t.trace_id);
      const services = [...(t.services || [])].map(String).sort();
      setAttr(v.tr, 'data-services', services.join(','));
      setAttr(v.tr, 'data-order-id', t.order_id || '');
      v.tr.classList.toggle('error', !!t.error);
      v.tr.classList.toggle('selected', t.trace_id === openTraceId);
      setText(v.cells.root, t.root || '');
      v.cells.services.replaceChildren(...services.map((s) => el('span', { class: 'svc-chip', style: `--svc:${serviceColour(s)}`, text: s })));
      setText(v.cells.spans, fmtInt(t.spans));
      setText(v.cells.duration, fmtMs(t.duration_ms));
      setText(v.cells.order, t.order_id || '');
      v.cells.order.title = t.order_id || '';
      v.tr.title = `trace ${t.trace_id} · started ${fmtTime(t.started_at)}`;
      placeAt(tbody, v.tr, seen.size - 1);
    });
    for (const [id, v] of traceRows) if (!seen.has(id)) { v.tr.remove(); traceRows.delete(id); }
    const empty = $('trace-empty');
    empty.hidden = seen.size > 0;
    setText(empty, query ? `No traces for order ${query} (yet).` : 'No traces yet.');

    if (openForOrder && openForOrder === query) {
      const matches = list.filter((t) => t && t.order_id && t.order_id.toLowerCase() === query.toLowerCase());
      // Prefer the trace that placed the order (a POST), else the oldest one.
      const best = matches.find((t) => /^POST\b/.test(t.root || '')) || matches[matches.length - 1];
      if (best) { openForOrder = null; showTrace(best.trace_id); }
    }
  }

  async function pollTraces() {
    const seq = ++tracesSeq;
    const q = query;
    const url = `/api/traces?limit=50${q ? `&order_id=${encodeURIComponent(q)}` : ''}`;
    try {
      const body = await api(url);
      if (seq !== tracesSeq) return; // a newer search superseded this answer
      setFailing('traces', false);
      setText($('trace-search-status'), q ? `filtered by order ${q}` : '');
      $('trace-search-status').classList.remove('bad');
      renderTraces((body && body.traces) || []);
    } catch (err) {
      if (seq !== tracesSeq) return;
      if (isBackendFailure(err)) setFailing('traces', true, err);
      else { setText($('trace-search-status'), `search failed: ${err.message}`); $('trace-search-status').classList.add('bad'); }
    }
    if (openTraceId) refreshWaterfall();
  }

  function setQuery(value, openTrace) {
    const q = value.trim();
    const input = $('order-search');
    if (input.value.trim() !== q) input.value = q;
    query = q;
    openForOrder = openTrace && q ? q : null;
    pollTraces();
  }

  // ------------------------------------------------------------- waterfall
  const PALETTE = ['#7c5cd6', '#2f7fd8', '#1f9d6b', '#d9822b', '#c2417a', '#3aa6b9', '#8a6d3b', '#5c6bc0'];
  const FIXED = { gateway: PALETTE[0], order: PALETTE[1], catalog: PALETTE[2] };
  function serviceColour(name) {
    if (FIXED[name]) return FIXED[name];
    let h = 0;
    for (const ch of String(name)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    return PALETTE[3 + (h % (PALETTE.length - 3))];
  }

  // Depth-first order (children by start_ms) with depth from parent_span_id; orphans are roots.
  function spanTree(spans) {
    const byId = new Map(spans.map((s) => [s.span_id, s]));
    const children = new Map();
    const roots = [];
    for (const s of spans) {
      const p = s.parent_span_id;
      if (p && byId.has(p) && p !== s.span_id) {
        if (!children.has(p)) children.set(p, []);
        children.get(p).push(s);
      } else roots.push(s);
    }
    const out = [];
    const visited = new Set();
    const walk = (s, depth) => {
      if (visited.has(s.span_id)) return;
      visited.add(s.span_id);
      out.push({ span: s, depth });
      for (const c of children.get(s.span_id) || []) walk(c, depth + 1);
    };
    roots.forEach((r) => walk(r, 0));
    spans.forEach((s) => { if (!visited.has(s.span_id)) walk(s, 0); }); // cycles
    return out;
  }

  function renderWaterfall(t) {
    const spans = [...(t.spans || [])].sort((a, b) => (a.start_ms || 0) - (b.start_ms || 0));
    const total = Math.max(t.duration_ms || 0, ...spans.map((s) => (s.start_ms || 0) + (s.duration_ms || 0)), 0.001);
    const close = el('button', { type: 'button', class: 'wf-close', 'aria-label': 'close waterfall', text: '×' });
    close.addEventListener('click', closeWaterfall);
    const axis = el('div', { class: 'wf-axis' }, el('span', { class: 'wf-axis-spacer' }),
      el('span', { class: 'wf-ticks' }, ...[0, 0.25, 0.5, 0.75, 1].map((f) =>
        el('span', { class: 'wf-tick', style: `left:${f * 100}%`, text: fmtMs(total * f) }))));
    const list = el('ol', { class: 'wf-spans' });
    for (const { span: s, depth } of spanTree(spans)) {
      const left = ((s.start_ms || 0) / total) * 100;
      const width = Math.max(((s.duration_ms || 0) / total) * 100, 0.4);
      const svc = String(s.service || '');
      const bar = el('div', { class: 'wf-bar', style: `left:${left.toFixed(3)}%;width:${Math.min(width, 100 - left).toFixed(3)}%` });
      // Duration label after the bar, else before it, else inside its end.
      const end = Math.min(left + width, 100);
      const pos = end <= 80 ? `left:${end.toFixed(3)}%` : left >= 20 ? `right:${(100 - left).toFixed(3)}%` : `right:${(100 - end).toFixed(3)}%`;
      const dur = el('span', { class: `wf-dur${end > 80 && left < 20 ? ' wf-dur-in' : ''}`, style: pos, text: fmtMs(s.duration_ms) });
      const attrs = el('dl', { class: 'wf-attrs', hidden: true });
      const kv = [['service', svc], ['kind', s.kind], ['status', s.status], ['start', fmtMs(s.start_ms)], ['span id', s.span_id],
        ...Object.entries(s.attributes || {})];
      for (const [k, val] of kv) attrs.append(el('dt', { text: k }), el('dd', { text: String(val ?? '') }));
      const li = el('li', {
        class: `wf-span status-${s.status || 'unset'}`, 'data-testid': 'span', 'data-service': svc, 'data-span-id': s.span_id || '',
        'data-parent-span-id': s.parent_span_id || '', 'data-name': s.name || '', style: `--svc:${serviceColour(svc)};--depth:${depth}`,
      },
      el('div', { class: 'wf-row', title: `${svc}: ${s.name || ''} (${s.kind || ''}, ${s.status || ''})` },
        el('div', { class: 'wf-label' }, el('span', { class: 'svc-dot' }), el('span', { class: 'wf-svc', text: svc }), el('span', { class: 'wf-name', text: s.name || '' })),
        el('div', { class: 'wf-track' }, bar, dur)),
      attrs);
      li.firstChild.addEventListener('click', () => { attrs.hidden = !attrs.hidden; li.classList.toggle('expanded', !attrs.hidden); });
      list.append(li);
    }
    return el('div', { class: 'waterfall', 'data-testid': 'waterfall', 'data-trace-id': t.trace_id },
      el('header', { class: 'wf-head' },
        el('span', { class: 'mono', text: t.trace_id }),
        el('span', { class: 'muted', text: `${spans.length} spans · ${fmtMs(t.duration_ms)} · ${fmtTime(t.started_at)}` }), close),
      axis, list);
  }

  function showTrace(id) {
    if (openTraceId !== id) {
      openTraceId = id;
      openSignature = '';
      $('waterfall-slot').replaceChildren(el('p', { class: 'muted placeholder', text: `Loading trace ${id}…` }));
      for (const [tid, v] of traceRows) v.tr.classList.toggle('selected', tid === id);
    }
    refreshWaterfall();
  }

  // (Re)load the open trace; re-render only when its spans changed, so an open waterfall stays put.
  async function refreshWaterfall() {
    const id = openTraceId;
    const seq = ++waterfallSeq;
    try {
      const t = await api(`/api/traces/${encodeURIComponent(id)}`);
      if (seq !== waterfallSeq || id !== openTraceId || !t) return;
      const sig = (t.spans || []).map((s) => `${s.span_id}:${s.duration_ms}:${s.status}`).join('|');
      if (sig === openSignature) return;
      openSignature = sig;
      $('waterfall-slot').replaceChildren(renderWaterfall(t));
    } catch (err) {
      if (seq !== waterfallSeq || id !== openTraceId) return;
      if (err.status === 404) {
        openSignature = '';
        $('waterfall-slot').replaceChildren(el('p', { class: 'muted placeholder', text: `Trace ${id} not found (yet).` }));
      } else if (isBackendFailure(err)) setFailing('traces', true, err);
    }
  }

  function closeWaterfall() {
    openTraceId = null;
    openSignature = '';
    waterfallSeq++;
    $('waterfall-slot').replaceChildren(el('p', { class: 'muted placeholder', text: 'Click a trace to see its waterfall.' }));
    for (const v of traceRows.values()) v.tr.classList.remove('selected');
    if (/^#trace=/.test(location.hash)) history.replaceState(null, '', location.pathname + location.search);
  }

  // ------------------------------------------------------- fragment, search
  function applyHash() {
    const h = decodeURIComponent(location.hash.replace(/^#/, ''));
    let m;
    if ((m = /^order=(.+)$/.exec(h))) setQuery(m[1], true);
    else if ((m = /^trace=(.+)$/.exec(h))) showTrace(m[1].trim());
  }

  // Keep an #order= fragment in step with the search box (replaceState: no hashchange).
  function syncOrderHash(v, force) {
    if (!force && !/^#order=/.test(location.hash)) return;
    history.replaceState(null, '', location.pathname + location.search + (v ? `#order=${encodeURIComponent(v)}` : ''));
  }

  let searchTimer = null;
  const input = $('order-search');
  input.addEventListener('input', () => {
    clearTimeout(searchTimer);
    const v = input.value.trim();
    if (v === '' || UUID_RE.test(v)) searchTimer = setTimeout(() => { syncOrderHash(v, false); setQuery(v, false); }, 200);
  });
  $('trace-search').addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(searchTimer);
    const v = input.value.trim();
    syncOrderHash(v, true);
    setQuery(v, true);
  });
  window.addEventListener('hashchange', applyHash);

  // --------------------------------------------------------------- polling
  function every(ms, fn) {
    const tick = async () => {
      try { await fn(); } catch (err) { console.error(err); }
      setTimeout(tick, ms);
    };
    tick();
  }

  applyHash();
  every(OVERVIEW_MS, pollOverview);
  every(TRACES_MS, pollTraces);
})();
