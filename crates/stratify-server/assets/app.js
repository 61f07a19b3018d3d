// Stratify dashboard: every page is drawn here from the public /v1 API,
// authenticated by the session cookie. No framework, no build step, nothing
// loaded from elsewhere. Charts are SVG drawn by the functions below.
'use strict';
(function () {
  // ---------------------------------------------------------------- basics
  const CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || '';
  const CAPS = new Set((document.body.dataset.caps || '').split(' ').filter(Boolean));
  const can = (c) => CAPS.has(c);
  const app = document.getElementById('app');
  const enc = encodeURIComponent;
  const COLORS = ['#4f46e5', '#059669', '#d97706', '#db2777', '#0891b2', '#7c3aed', '#65a30d', '#dc2626'];
  const DAY = 86400000;
  let serverNow = Date.now();

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false || k === 'value') continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'checked' || k === 'disabled' || k === 'selected') el[k] = true;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function append(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k == null || k === false) continue;
      el.append(k instanceof Node ? k : String(k));
    }
  }
  /** An HTML element: h('a', {href}, 'text', child, [more]). */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, kids);
    if (attrs && attrs.value != null) el.value = attrs.value;
    return el;
  }
  const SVGNS = 'http://www.w3.org/2000/svg';
  /** An SVG element. */
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
    append(el, kids);
    return el;
  }

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status;
      this.code = e.code;
      this.field = e.field;
    }
  }
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') headers['X-CSRF-Token'] = CSRF;
    const opts = { method, headers, credentials: 'same-origin' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    if (res.status === 401) {
      location.href = '/login?next=' + enc(location.pathname + location.search);
      throw new ApiError(401, null);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }
  const get = (p) => api('GET', p);
  const optional = (p, fallback) => get(p).catch(() => fallback);

  // ---------------------------------------------------------------- formats
  const nf = new Intl.NumberFormat('en-US');
  const fmtInt = (n) => (n == null ? '–' : nf.format(n));
  function fmtNum(x, digits = 3) {
    if (x == null || !isFinite(x)) return '–';
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e7)) return x.toExponential(2);
    return x.toLocaleString('en-US', { maximumFractionDigits: digits });
  }
  const fmtPct = (x, d = 2) => (x == null || !isFinite(x) ? '–' : (x * 100).toFixed(d) + '%');
  const fmtSigned = (x, f) => (x == null || !isFinite(x) ? '–' : (x > 0 ? '+' : '') + f(x));
  function fmtP(p) {
    if (p == null) return '–';
    if (p < 0.0001) return '< 0.0001';
    return p.toFixed(4);
  }
  /** "p = 0.0312" or "p < 0.0001". */
  const pIs = (p) => (p != null && p < 0.0001 ? 'p < 0.0001' : `p = ${fmtP(p)}`);
  function fmtTime(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    return d.toISOString().slice(0, 16).replace('T', ' ');
  }
  const fmtDate = (iso) => (iso ? String(iso).slice(0, 10) : '–');
  function fmtDuration(seconds) {
    if (seconds == null || !isFinite(seconds)) return '–';
    const units = [[86400, 'd'], [3600, 'h'], [60, 'min'], [1, 's']];
    for (const [n, u] of units) if (Math.abs(seconds) >= n) return fmtNum(seconds / n, 1) + ' ' + u;
    return fmtNum(seconds, 1) + ' s';
  }
  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  function shortDate(ms, withHour) {
    const d = new Date(ms);
    const day = `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`;
    return withHour ? `${day} ${String(d.getUTCHours()).padStart(2, '0')}:00` : day;
  }
  function json(v) { return JSON.stringify(v, null, 2); }
  function compact(v) {
    if (v == null) return '';
    const t = JSON.stringify(v);
    return t.length > 90 ? t.slice(0, 87) + '…' : t;
  }

  // ---------------------------------------------------------------- page kit
  function setTitle(t) { document.title = `${t} · Stratify`; }
  function render(...nodes) {
    app.replaceChildren();
    append(app, nodes);
  }
  function head(title, { crumbs, sub, actions } = {}) {
    setTitle(typeof title === 'string' ? title : 'Stratify');
    return h('div', { class: 'page-head' },
      h('div', null,
        crumbs ? h('div', { class: 'crumbs' }, crumbs) : null,
        h('h1', null, title),
        sub ? h('div', { class: 'sub' }, sub) : null),
      actions ? h('div', { class: 'actions' }, actions) : null);
  }
  function card(title, body, { actions, cls, id } = {}) {
    return h('section', { class: 'card ' + (cls || ''), id },
      title || actions ? h('div', { class: 'card-head' }, h('h2', null, title), actions ? h('div', { class: 'actions' }, actions) : null) : null,
      body);
  }
  function stat(label, value, hint) {
    return h('div', { class: 'card stat' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), hint ? h('div', { class: 'hint' }, hint) : null);
  }
  /** columns: [label | {label, num}], rows: arrays of cells. */
  function table(columns, rows, empty = 'Nothing here yet.') {
    const cols = columns.map((c) => (typeof c === 'string' ? { label: c } : c));
    if (!rows.length) return h('div', { class: 'empty' }, empty);
    return h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, cols.map((c) => h('th', { class: c.num ? 'num' : null }, c.label)))),
      h('tbody', null, rows.map((r) => h('tr', r.attrs || null, (r.cells || r).map((cell, i) => h('td', { class: cols[i] && cols[i].num ? 'num' : null }, cell)))))));
  }
  const badge = (text, cls) => h('span', { class: 'badge ' + (cls || text) }, text);
  function kv(pairs) {
    return h('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v == null || v === '' ? '–' : v)]));
  }
  function alertBox(err, cls) {
    const msg = err instanceof Error ? err.message : String(err);
    const field = err && err.field ? h('div', { class: 'small' }, 'at ', h('code', null, err.field)) : null;
    return h('div', { class: 'alert ' + (cls || ''), role: 'alert' }, msg, field);
  }
  /** A labelled form field (the label points at the input's id). */
  function field(label, input, help) {
    return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, help ? h('div', { class: 'help' }, help) : null);
  }
  /** Shows an API error above a form and marks the input its JSON pointer names. */
  function showFormError(box, err) {
    document.querySelectorAll('.invalid').forEach((x) => x.classList.remove('invalid'));
    box.replaceChildren(err ? alertBox(err) : '');
    if (!err || !err.field) return;
    const el = [...document.querySelectorAll('[data-ptr]')]
      .filter((x) => err.field.startsWith(x.dataset.ptr))
      .sort((a, b) => b.dataset.ptr.length - a.dataset.ptr.length)[0];
    if (el) { el.classList.add('invalid'); el.focus(); }
  }
  const swatch = (color) => h('span', { class: 'sw', style: `background:${color}` });
  let toastTimer;
  function toast(msg, error) {
    const t = document.getElementById('toast');
    if (!t) return;
    t.textContent = msg;
    t.className = 'toast show' + (error ? ' error' : '');
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.className = 'toast'; }, 3200);
  }
  function debounce(fn, ms) {
    let t;
    return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  }
  /** Runs `tasks` (functions returning promises) at most `n` at a time. */
  async function pool(tasks, n) {
    let i = 0;
    const worker = async () => { while (i < tasks.length) { const t = tasks[i++]; try { await t(); } catch (_) { /* shown per task */ } } };
    await Promise.all(Array.from({ length: Math.min(n, tasks.length) }, worker));
  }

  // ---------------------------------------------------------------- charts
  function niceStep(range, n) {
    const raw = range / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const r = raw / mag;
    return (r <= 1 ? 1 : r <= 2 ? 2 : r <= 2.5 ? 2.5 : r <= 5 ? 5 : 10) * mag;
  }
  function ticks(min, max, n) {
    if (!(max > min)) {
      const pad = Math.abs(min) * 0.1 || 1;
      min -= pad;
      max += pad;
    }
    const step = niceStep(max - min, n);
    const lo = Math.floor(min / step + 1e-9) * step;
    const hi = Math.ceil(max / step - 1e-9) * step;
    const out = [];
    for (let v = lo; v <= hi + step / 2; v += step) out.push(+v.toFixed(12));
    return out;
  }
  function timeTicks(min, max, n) {
    const H = 3600000;
    const steps = [H, 3 * H, 6 * H, 12 * H, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 365 * DAY];
    const step = steps.find((st) => (max - min) / st <= n) || steps[steps.length - 1];
    const out = [];
    for (let v = Math.ceil(min / step) * step; v <= max; v += step) out.push(v);
    return { values: out, hourly: step < DAY };
  }

  /**
   * A line chart over time. series: [{label, color, points: [{x, y, lo?, hi?}]}].
   * `lo`/`hi` draw a band (the confidence interval); `step` draws steps.
   */
  function lineChart({ series, xLabel, yLabel, yFormat = fmtNum, height = 300, width = 760, includeZero = false, step = false, title }) {
    const pts = series.flatMap((x) => x.points).filter((p) => p.y != null && isFinite(p.y));
    if (!pts.length) return h('div', { class: 'empty' }, 'No data to chart yet.');
    const m = { l: 70, r: 18, t: 14, b: 50 };
    let xmin = Math.min(...pts.map((p) => p.x));
    let xmax = Math.max(...pts.map((p) => p.x));
    if (xmin === xmax) { xmin -= DAY / 2; xmax += DAY / 2; }
    const ys = pts.flatMap((p) => [p.y, p.lo, p.hi]).filter((v) => v != null && isFinite(v));
    let ymin = Math.min(...ys);
    let ymax = Math.max(...ys);
    if (includeZero) { ymin = Math.min(0, ymin); ymax = Math.max(0, ymax); }
    const yt = ticks(ymin, ymax, 5);
    ymin = yt[0];
    ymax = yt[yt.length - 1];
    const W = width - m.l - m.r;
    const H = height - m.t - m.b;
    const X = (x) => m.l + ((x - xmin) / (xmax - xmin)) * W;
    const Y = (y) => m.t + (1 - (y - ymin) / (ymax - ymin)) * H;
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title || yLabel || 'chart' });
    for (const v of yt) {
      svg.append(s('line', { class: 'grid-line', x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v) }));
      svg.append(s('text', { x: m.l - 8, y: Y(v) + 4, 'text-anchor': 'end' }, yFormat(v)));
    }
    const xt = timeTicks(xmin, xmax, 7);
    for (const v of xt.values) {
      svg.append(s('line', { class: 'axis-line', x1: X(v), x2: X(v), y1: m.t + H, y2: m.t + H + 5 }));
      svg.append(s('text', { x: X(v), y: m.t + H + 18, 'text-anchor': 'middle' }, shortDate(v, xt.hourly)));
    }
    svg.append(s('line', { class: 'axis-line', x1: m.l, x2: width - m.r, y1: m.t + H, y2: m.t + H }));
    svg.append(s('line', { class: 'axis-line', x1: m.l, x2: m.l, y1: m.t, y2: m.t + H }));
    if (ymin < 0 && ymax > 0) svg.append(s('line', { class: 'zero', x1: m.l, x2: width - m.r, y1: Y(0), y2: Y(0) }));
    if (xLabel) svg.append(s('text', { class: 'axis-label', x: m.l + W / 2, y: height - 8, 'text-anchor': 'middle' }, xLabel));
    if (yLabel) svg.append(s('text', { class: 'axis-label', x: 14, y: m.t + H / 2, 'text-anchor': 'middle', transform: `rotate(-90 14 ${m.t + H / 2})` }, yLabel));
    series.forEach((ser, i) => {
      const color = ser.color || COLORS[i % COLORS.length];
      const band = ser.points.filter((p) => p.lo != null && p.hi != null && isFinite(p.lo) && isFinite(p.hi));
      if (band.length > 1) {
        const top = band.map((p) => `${X(p.x)},${Y(p.hi)}`);
        const bottom = band.slice().reverse().map((p) => `${X(p.x)},${Y(p.lo)}`);
        svg.append(s('polygon', { points: top.concat(bottom).join(' '), fill: color, 'fill-opacity': 0.13, stroke: 'none', 'data-band': ser.label }));
      } else if (band.length === 1) {
        const p = band[0];
        svg.append(s('line', { x1: X(p.x), x2: X(p.x), y1: Y(p.lo), y2: Y(p.hi), stroke: color, 'stroke-width': 6, 'stroke-opacity': 0.25, 'stroke-linecap': 'round', 'data-band': ser.label }));
      }
    });
    series.forEach((ser, i) => {
      const color = ser.color || COLORS[i % COLORS.length];
      const line = ser.points.filter((p) => p.y != null && isFinite(p.y));
      if (!line.length) return;
      let d = '';
      line.forEach((p, j) => {
        if (j === 0) d += `M${X(p.x)},${Y(p.y)}`;
        else if (step) d += `H${X(p.x)}V${Y(p.y)}`;
        else d += `L${X(p.x)},${Y(p.y)}`;
      });
      svg.append(s('path', { d, fill: 'none', stroke: color, 'stroke-width': 2.2, 'stroke-linejoin': 'round', 'data-series': ser.label }));
      if (line.length <= 45) {
        for (const p of line) {
          const interval = p.lo != null && p.hi != null ? ` [${yFormat(p.lo)}, ${yFormat(p.hi)}]` : '';
          svg.append(s('circle', { cx: X(p.x), cy: Y(p.y), r: line.length === 1 ? 4.5 : 3, fill: '#fff', stroke: color, 'stroke-width': 2 },
            s('title', null, `${ser.label} · ${shortDate(p.x, xt.hourly)}: ${yFormat(p.y)}${interval}`)));
        }
      }
    });
    const legend = series.length > 1 || series[0].lo !== undefined
      ? h('div', { class: 'legend' }, series.map((ser, i) => h('span', null, swatch(ser.color || COLORS[i % COLORS.length]), ser.label)))
      : null;
    return h('div', { class: 'chart-wrap' }, svg, legend);
  }

  /** Estimates with intervals, one row each, around a reference line at 0. */
  function intervalChart(rows, { xLabel, format = fmtNum, width = 760 }) {
    const usable = rows.filter((r) => r.est != null && isFinite(r.est));
    if (!usable.length) return h('div', { class: 'empty' }, 'No lift to show yet: the treatment or the control has no data.');
    const rowH = 44;
    const m = { l: 130, r: 24, t: 10, b: 46 };
    const height = m.t + m.b + rowH * usable.length;
    const vals = usable.flatMap((r) => [r.est, r.lo, r.hi]).filter((v) => v != null && isFinite(v)).concat([0]);
    const xt = ticks(Math.min(...vals), Math.max(...vals), 6);
    const [xmin, xmax] = [xt[0], xt[xt.length - 1]];
    const W = width - m.l - m.r;
    const X = (x) => m.l + ((x - xmin) / (xmax - xmin)) * W;
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': xLabel });
    const bottom = m.t + rowH * usable.length;
    for (const v of xt) {
      svg.append(s('line', { class: 'grid-line', x1: X(v), x2: X(v), y1: m.t, y2: bottom }));
      svg.append(s('text', { x: X(v), y: bottom + 17, 'text-anchor': 'middle' }, format(v)));
    }
    svg.append(s('line', { class: 'axis-line', x1: m.l, x2: width - m.r, y1: bottom, y2: bottom }));
    svg.append(s('line', { class: 'zero', x1: X(0), x2: X(0), y1: m.t, y2: bottom }));
    svg.append(s('text', { class: 'axis-label', x: m.l + W / 2, y: height - 8, 'text-anchor': 'middle' }, xLabel));
    usable.forEach((r, i) => {
      const y = m.t + rowH * i + rowH / 2;
      const color = r.color || COLORS[(i + 1) % COLORS.length];
      svg.append(s('text', { x: m.l - 12, y: y + 4, 'text-anchor': 'end', class: 'axis-label' }, r.label));
      if (r.lo != null && r.hi != null) {
        svg.append(s('line', { x1: X(r.lo), x2: X(r.hi), y1: y, y2: y, stroke: color, 'stroke-width': 3, 'stroke-linecap': 'round' }));
        for (const e of [r.lo, r.hi]) svg.append(s('line', { x1: X(e), x2: X(e), y1: y - 7, y2: y + 7, stroke: color, 'stroke-width': 2 }));
      }
      svg.append(s('circle', { cx: X(r.est), cy: y, r: 6, fill: r.significant ? color : '#fff', stroke: color, 'stroke-width': 2.5 },
        s('title', null, `${r.label}: ${format(r.est)} [${format(r.lo)}, ${format(r.hi)}]`)));
    });
    return svg;
  }

  function sparkline(values, width = 140, height = 30) {
    if (!values.length) return h('span', { class: 'muted small' }, 'no history');
    if (values.length === 1) values = [values[0], values[0]];
    const min = Math.min(...values);
    const max = Math.max(...values);
    const span = max - min || 1;
    const X = (i) => (values.length === 1 ? width / 2 : (i / (values.length - 1)) * (width - 4) + 2);
    const Y = (v) => height - 3 - ((v - min) / span) * (height - 6);
    const line = values.map((v, i) => `${X(i)},${Y(v)}`).join(' ');
    return s('svg', { class: 'spark', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `size from ${values[0]} to ${values[values.length - 1]}` },
      s('polygon', { points: `${X(0)},${height} ${line} ${X(values.length - 1)},${height}`, fill: '#6366f1', 'fill-opacity': 0.12 }),
      s('polyline', { points: line, fill: 'none', stroke: '#4f46e5', 'stroke-width': 1.6 }),
      s('circle', { cx: X(values.length - 1), cy: Y(values[values.length - 1]), r: 2.4, fill: '#4f46e5' }));
  }

  function weightBar(variants) {
    const svg = s('svg', { width: 140, height: 8, viewBox: '0 0 100 8', preserveAspectRatio: 'none', class: 'spark' });
    let x = 0;
    variants.forEach((v, i) => {
      svg.append(s('rect', { x, y: 0, width: v.weight, height: 8, fill: COLORS[i % COLORS.length] }, s('title', null, `${v.key}: ${v.weight}%`)));
      x += v.weight;
    });
    return svg;
  }

  /** Size history as daily (or hourly) values up to now, carrying sizes forward. */
  function fillSizes(points, bucketMs) {
    if (!points.length) return [];
    const out = [];
    let i = 0;
    let size = 0;
    const start = Date.parse(points[0].at);
    const end = Math.max(Date.parse(points[points.length - 1].at), Math.floor(serverNow / bucketMs) * bucketMs);
    for (let t = start; t <= end; t += bucketMs) {
      while (i < points.length && Date.parse(points[i].at) <= t) { size = points[i].size; i++; }
      out.push({ x: t, y: size });
    }
    return out;
  }

  // ---------------------------------------------------------------- overview
  async function overview() {
    const [segs, exps, ingest] = await Promise.all([
      can('read') ? get('/v1/segments') : null,
      can('read') ? get('/v1/experiments') : null,
      can('ingest') ? get('/v1/ingest/status') : null,
    ]);
    const stats = [];
    if (segs) {
      const dyn = segs.segments.filter((x) => x.kind === 'dynamic').length;
      stats.push(stat('Segments', fmtInt(segs.segments.length), `${dyn} dynamic · ${segs.segments.length - dyn} static`));
    }
    if (exps) {
      const running = exps.experiments.filter((e) => e.status === 'running').length;
      stats.push(stat('Running experiments', fmtInt(running), `${exps.experiments.length} in all`));
    }
    if (ingest) {
      const sum = (k) => ingest.sources.reduce((a, x) => a + x[k], 0);
      stats.push(stat('Events accepted', fmtInt(sum('accepted')), `${fmtInt(sum('duplicates'))} duplicates · ${fmtInt(sum('rejected'))} rejected`));
      const last = ingest.sources.map((x) => x.last_event_at).filter(Boolean).sort().pop();
      stats.push(stat('Latest event', last ? fmtDate(last) : '–', last ? fmtTime(last) + ' UTC' : 'nothing received yet'));
    }
    const cards = [];
    if (exps) {
      const running = exps.experiments.filter((e) => e.status === 'running');
      cards.push(card('Running experiments', table(['Experiment', 'Variants', { label: 'Coverage', num: true }, ''],
        running.slice(0, 8).map((e) => [
          h('div', null, h('a', { href: `/experiments/${enc(e.id)}` }, e.name), h('div', { class: 'desc mono' }, e.key)),
          weightBar(e.variants),
          fmtPct(e.coverage, 0),
          h('a', { href: `/experiments/${enc(e.id)}/results` }, 'Results →'),
        ]), 'No experiment is running.'), { cls: 'flush', actions: h('a', { href: '/experiments' }, 'All experiments') }));
    }
    if (segs) {
      const top = segs.segments.slice().sort((a, b) => (b.size || 0) - (a.size || 0)).slice(0, 8);
      cards.push(card('Largest segments', table(['Segment', { label: 'Members', num: true }],
        top.map((x) => [h('a', { href: `/segments/${enc(x.id)}` }, x.name), fmtInt(x.size)]), 'No segment yet.'),
      { cls: 'flush', actions: h('a', { href: '/segments' }, 'All segments') }));
    }
    render(head('Overview', { sub: 'Who is in which segment, who gets which variant, and which variant wins.' }),
      h('div', { class: 'grid four' }, stats),
      h('div', { class: 'grid two', style: 'margin-top:18px' }, cards));
  }

  // ---------------------------------------------------------------- segments
  async function segmentsList() {
    const { segments } = await get('/v1/segments');
    const spark = new Map();
    const filter = h('input', { type: 'search', placeholder: 'Filter by name…', 'aria-label': 'Filter segments' });
    const rows = segments.map((x) => {
      const cell = h('span', { class: 'muted small' }, '…');
      spark.set(x.id, cell);
      const size = x.build && x.build.state === 'building'
        ? h('span', null, badge('building', 'building'), ' ', fmtPct(x.build.total ? x.build.evaluated / x.build.total : 0, 0))
        : h('strong', null, fmtInt(x.size));
      return {
        attrs: { 'data-name': x.name.toLowerCase(), 'data-segment': x.id },
        cells: [
          h('div', null, h('a', { href: `/segments/${enc(x.id)}` }, x.name), x.description ? h('div', { class: 'desc' }, x.description) : null),
          badge(x.kind),
          size,
          cell,
          'v' + x.version,
          h('span', { class: 'nowrap' }, fmtTime(x.updated_at)),
        ],
      };
    });
    const list = table(['Segment', 'Kind', { label: 'Members', num: true }, 'Size, last 30 days', 'Version', 'Updated (UTC)'], rows,
      'No segments yet. Create one to start grouping users.');
    filter.addEventListener('input', () => {
      const q = filter.value.trim().toLowerCase();
      list.querySelectorAll('tbody tr').forEach((tr) => tr.classList.toggle('hidden', !!q && !tr.dataset.name.includes(q)));
    });
    render(head('Segments', {
      sub: `${segments.length} segments · sizes are live`,
      actions: [filter, can('edit') ? h('a', { class: 'button primary', href: '/segments/new' }, '+ New segment') : null],
    }), card(null, list, { cls: 'flush' }));
    await pool(segments.map((x) => async () => {
      const cell = spark.get(x.id);
      try {
        const hist = await get(`/v1/segments/${enc(x.id)}/size-history?bucket=day`);
        const values = fillSizes(hist.points, DAY).slice(-30).map((p) => p.y);
        cell.replaceWith(sparkline(values));
      } catch (e) {
        cell.textContent = '–';
      }
    }), 4);
  }

  async function segmentPage(id) {
    const seg = await get(`/v1/segments/${enc(id)}`);
    const actions = [];
    if (can('edit')) {
      actions.push(h('a', { class: 'button', href: `/segments/${enc(id)}/edit` }, 'Edit'));
      actions.push(h('button', {
        class: 'danger',
        onclick: async () => {
          if (!confirm(`Delete the segment "${seg.name}"? Experiments that target it must be detached first.`)) return;
          try { await api('DELETE', `/v1/segments/${enc(id)}`); location.href = '/segments'; } catch (e) { toast(e.message, true); }
        },
      }, 'Delete'));
    }
    const chartBox = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    const bucketSel = h('select', { 'aria-label': 'Bucket' }, h('option', { value: 'day' }, 'Daily'), h('option', { value: 'hour' }, 'Hourly'));
    const changesBox = h('div', null, h('p', { class: 'muted', style: 'padding:16px 20px' }, 'Loading…'));
    const membersBox = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    const sqlBox = h('pre', { class: 'sql' }, '…');
    const dialect = h('select', { 'aria-label': 'SQL dialect' }, h('option', { value: 'sqlite' }, 'SQLite'), h('option', { value: 'postgres' }, 'PostgreSQL'));
    const build = seg.build;
    render(
      head(seg.name, {
        crumbs: [h('a', { href: '/segments' }, 'Segments'), ' / ', seg.name],
        sub: seg.description || null,
        actions,
      }),
      h('div', { class: 'grid four' },
        stat('Members', fmtInt(seg.size), build && build.state === 'building' ? `building: ${fmtInt(build.evaluated)} of ${fmtInt(build.total)} evaluated` : 'live'),
        stat('Kind', seg.kind, seg.kind === 'dynamic' ? 'kept current by events and time' : 'a fixed list'),
        stat('Version', 'v' + seg.version, 'created ' + fmtDate(seg.created_at)),
        stat('Updated', fmtDate(seg.updated_at), fmtTime(seg.updated_at) + ' UTC')),
      h('div', { class: 'grid side', style: 'margin-top:18px' },
        card('Size history', chartBox, { actions: bucketSel }),
        card('Latest changes', changesBox, { cls: 'flush' })),
      h('div', { class: 'grid two', style: 'margin-top:18px' },
        card('Rule', [seg.rules ? h('pre', { class: 'sql' }, json(seg.rules)) : h('p', { class: 'muted' }, 'A static list: no rule.'),
          seg.rules ? h('div', { style: 'margin-top:14px' }, h('div', { class: 'card-head' }, h('h3', null, 'Generated SQL'), dialect), sqlBox) : null]),
        card('Sample of members', membersBox)));
    const loadChart = async () => {
      const bucket = bucketSel.value;
      const hist = await get(`/v1/segments/${enc(id)}/size-history?bucket=${bucket}`);
      const ms = bucket === 'hour' ? 3600000 : DAY;
      const points = fillSizes(hist.points, ms).slice(bucket === 'hour' ? -24 * 14 : -180);
      chartBox.replaceChildren(lineChart({ series: [{ label: 'Members', points }], yLabel: 'Members', xLabel: bucket === 'hour' ? 'Hour (UTC)' : 'Day (UTC)', yFormat: fmtInt, step: true, includeZero: true, height: 280 }));
    };
    bucketSel.addEventListener('change', () => loadChart().catch((e) => chartBox.replaceChildren(alertBox(e))));
    const loadSql = async () => {
      try {
        const q = await get(`/v1/segments/${enc(id)}/sql?dialect=${dialect.value}`);
        sqlBox.textContent = `${q.sql}\n\n-- parameters: ${JSON.stringify(q.params)}`;
      } catch (e) { sqlBox.textContent = e.message; }
    };
    dialect.addEventListener('change', loadSql);
    await Promise.all([
      loadChart().catch((e) => chartBox.replaceChildren(alertBox(e))),
      seg.rules ? loadSql() : null,
      get(`/v1/segments/${enc(id)}/changes?order=desc&limit=12`).then((c) => changesBox.replaceChildren(table(['User', 'Change', 'At (UTC)', 'Cause'],
        c.changes.map((x) => [h('a', { href: `/users/${enc(x.user_id)}` }, x.user_id), badge(x.change, x.change === 'entered' ? 'good' : 'bad'), h('span', { class: 'nowrap' }, fmtTime(x.at)), h('span', { class: 'muted small nowrap', title: typeof x.cause === 'string' ? '' : x.cause.event_id || '#' + x.cause.event_seq }, typeof x.cause === 'string' ? x.cause.replace('_', ' ') : 'an event')]),
        'No member has entered or left yet.'))).catch((e) => changesBox.replaceChildren(alertBox(e))),
      get(`/v1/segments/${enc(id)}/members?limit=24`).then((m) => membersBox.replaceChildren(
        h('p', { class: 'muted' }, `${fmtInt(m.user_ids.length)} of ${fmtInt(m.total_count)} members`),
        m.user_ids.length ? h('div', { class: 'row' }, m.user_ids.map((u) => h('a', { class: 'button small', href: `/users/${enc(u)}` }, u))) : null,
      )).catch((e) => membersBox.replaceChildren(alertBox(e))),
    ]);
  }

  // ------------------------------------------------- segment editor (rules)
  const OPS = ['eq', 'neq', 'gt', 'gte', 'lt', 'lte', 'in', 'not_in', 'between', 'contains', 'starts_with', 'ends_with', 'like', 'not_like', 'exists', 'not_exists', 'version_gte', 'version_gt', 'version_lte', 'version_lt', 'version_eq'];
  const NUM_OPS = ['gte', 'gt', 'eq', 'neq', 'lte', 'lt', 'between'];
  const OP_LABEL = { eq: '=', neq: '≠', gt: '>', gte: '≥', lt: '<', lte: '≤', in: 'is one of', not_in: 'is none of', between: 'between', contains: 'contains', starts_with: 'starts with', ends_with: 'ends with', like: 'like', not_like: 'not like', exists: 'exists', not_exists: 'is missing', version_gte: 'version ≥', version_gt: 'version >', version_lte: 'version ≤', version_lt: 'version <', version_eq: 'version =' };
  const AGGS = [['count', 'count of'], ['sum', 'sum of'], ['avg', 'average of'], ['min', 'minimum of'], ['max', 'maximum of'], ['seconds_since_last', 'seconds since last'], ['seconds_since_first', 'seconds since first']];
  const COMPUTED = ['total_orders', 'ltv', 'seconds_since_last_order', 'city', 'is_new_user', 'order_count_last_7_days', 'order_count_last_14_days', 'order_count_last_30_days'];
  const kindOf = (n) => (n && typeof n === 'object' && !Array.isArray(n)
    ? ('operator' in n && 'conditions' in n ? 'group' : 'not' in n ? 'not' : 'segment' in n ? 'segment' : 'event' in n ? 'behavior' : 'field' in n ? 'attribute' : 'other')
    : 'other');
  function drawable(n) {
    switch (kindOf(n)) {
      case 'group': return Array.isArray(n.conditions) && n.conditions.every(drawable);
      case 'not': return drawable(n.not);
      case 'segment': case 'attribute': return true;
      case 'behavior': return !n.where || (Array.isArray(n.where) && n.where.every((w) => kindOf(w) === 'attribute'));
      default: return false;
    }
  }
  function typed(text, type) {
    const t = String(text).trim();
    if (type === 'string') return t;
    if (/^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(t)) return Number(t);
    if (t === 'true' || t === 'false') return t === 'true';
    return t;
  }
  const shown = (v) => (v == null ? '' : Array.isArray(v) ? v.join(', ') : String(v));
  function reshapeValue(node, op) {
    const v = node.value;
    const first = Array.isArray(v) ? v[0] : v;
    if (op === 'exists' || op === 'not_exists') delete node.value;
    else if (op === 'in' || op === 'not_in') node.value = Array.isArray(v) ? v : first == null ? [] : [first];
    else if (op === 'between') node.value = Array.isArray(v) && v.length === 2 ? v : [first ?? 0, first ?? 0];
    else node.value = first ?? '';
    node.op = op;
  }

  /** The visual rule builder; `onChange(rule)` after every edit. */
  function ruleBuilder(initial, ctx, onChange) {
    const root = h('div', { class: 'builder' });
    let rule = initial;
    const changed = () => onChange(rule);
    const redraw = () => { root.replaceChildren(nodeEl(rule, (r) => { rule = r === undefined ? { operator: 'AND', conditions: [] } : r; redraw(); changed(); }, 0)); };
    function valueInputs(node, type, cls) {
      const op = node.op;
      if (op === 'exists' || op === 'not_exists') return null;
      if (op === 'between') {
        const [a, b] = Array.isArray(node.value) ? node.value : ['', ''];
        const lo = h('input', { class: 'f-value', value: shown(a), 'aria-label': 'from', placeholder: 'from' });
        const hi = h('input', { class: 'f-value', value: shown(b), 'aria-label': 'to', placeholder: 'to' });
        const upd = () => { node.value = [typed(lo.value, type), typed(hi.value, type)]; changed(); };
        lo.addEventListener('input', upd);
        hi.addEventListener('input', upd);
        return [lo, h('span', { class: 'muted' }, 'and'), hi];
      }
      const input = h('input', { class: cls || 'f-value', value: shown(node.value), 'aria-label': 'value', placeholder: op === 'in' || op === 'not_in' ? 'a, b, c' : 'value' });
      input.addEventListener('input', () => {
        node.value = op === 'in' || op === 'not_in'
          ? input.value.split(',').map((x) => x.trim()).filter(Boolean).map((x) => typed(x, type))
          : typed(input.value, type);
        changed();
      });
      return input;
    }
    function opSelect(node, ops) {
      const sel = h('select', { 'aria-label': 'operator', class: 'f-op' }, ops.map((o) => h('option', { value: o }, OP_LABEL[o] || o)));
      sel.value = node.op;
      sel.addEventListener('change', () => { reshapeValue(node, sel.value); redraw(); changed(); });
      return sel;
    }
    function fieldRow(node, replace, label, withTools = true) {
      const type = ctx.types[node.field];
      const field = h('input', { class: 'f-field', list: 'dl-fields', value: node.field || '', placeholder: 'attribute', 'aria-label': 'attribute' });
      field.addEventListener('input', () => { node.field = field.value.trim(); changed(); });
      field.addEventListener('change', redraw);
      return h('div', { class: 'cond', 'data-kind': 'attribute' },
        label ? h('span', { class: 'kind' }, label) : null,
        field, opSelect(node, OPS), valueInputs(node, type),
        withTools ? tools(node, replace) : h('button', { class: 'ghost small', title: 'Remove filter', onclick: () => replace(undefined) }, '✕'));
    }
    function tools(node, replace) {
      return h('span', { class: 'row', style: 'margin-left:auto;gap:4px' },
        h('button', { class: 'ghost small', title: 'Negate (NOT)', onclick: () => replace({ not: node }) }, 'NOT'),
        h('button', { class: 'ghost small', title: 'Remove', 'aria-label': 'Remove condition', onclick: () => replace(undefined) }, '✕'));
    }
    function behaviorRow(node, replace) {
      const event = h('input', { class: 'f-event', list: 'dl-events', value: node.event || '', placeholder: 'event name', 'aria-label': 'event' });
      event.addEventListener('input', () => { node.event = event.value.trim(); changed(); });
      const agg = h('select', { 'aria-label': 'aggregate', class: 'f-agg' }, AGGS.map(([v, l]) => h('option', { value: v }, l)));
      agg.value = node.agg || 'count';
      agg.addEventListener('change', () => {
        node.agg = agg.value;
        if (['sum', 'avg', 'min', 'max'].includes(agg.value)) node.property = node.property || 'amount';
        else delete node.property;
        redraw(); changed();
      });
      const needsProp = ['sum', 'avg', 'min', 'max'].includes(node.agg || 'count');
      const prop = needsProp ? h('input', { class: 'f-value', value: node.property || '', placeholder: 'property', 'aria-label': 'property' }) : null;
      if (prop) prop.addEventListener('input', () => { node.property = prop.value.trim(); changed(); });
      const m = /^(\d+)([smhd])$/.exec(node.within || '');
      const windowSel = h('select', { 'aria-label': 'window' }, h('option', { value: 'all' }, 'all time'), h('option', { value: 'last' }, 'in the last'));
      windowSel.value = m ? 'last' : 'all';
      const n = h('input', { class: 'f-num', type: 'number', min: 1, value: m ? m[1] : '30', 'aria-label': 'window length' });
      const unit = h('select', { 'aria-label': 'window unit' }, h('option', { value: 'd' }, 'days'), h('option', { value: 'h' }, 'hours'), h('option', { value: 'm' }, 'minutes'));
      unit.value = m ? m[2] : 'd';
      const updWindow = () => {
        if (windowSel.value === 'all') delete node.within; else node.within = `${Math.max(1, parseInt(n.value, 10) || 1)}${unit.value}`;
        n.classList.toggle('hidden', windowSel.value === 'all');
        unit.classList.toggle('hidden', windowSel.value === 'all');
        changed();
      };
      windowSel.addEventListener('change', updWindow);
      n.addEventListener('input', updWindow);
      unit.addEventListener('change', updWindow);
      n.classList.toggle('hidden', !m);
      unit.classList.toggle('hidden', !m);
      const filters = h('div', { class: 'filters' });
      (node.where || []).forEach((w, i) => filters.append(fieldRow(w, (r) => {
        if (r === undefined) node.where.splice(i, 1); else node.where[i] = r;
        if (!node.where.length) delete node.where;
        redraw(); changed();
      }, 'where', false)));
      const addFilter = h('button', { class: 'ghost small', onclick: () => { node.where = node.where || []; node.where.push({ field: 'city', op: 'eq', value: '' }); redraw(); changed(); } }, '+ where');
      return h('div', { class: 'cond', 'data-kind': 'behavior' },
        h('span', { class: 'kind' }, 'Behavior'),
        agg, prop, event, opSelect(node, NUM_OPS), valueInputs(node, 'number', 'f-num'), windowSel, n, unit, addFilter,
        tools(node, replace),
        node.where && node.where.length ? filters : null);
    }
    function segmentRow(node, replace) {
      const sel = h('select', { 'aria-label': 'segment' }, ctx.segments.map((x) => h('option', { value: x.id }, x.name)));
      sel.value = node.segment;
      sel.addEventListener('change', () => { node.segment = sel.value; changed(); });
      return h('div', { class: 'cond', 'data-kind': 'segment' }, h('span', { class: 'kind' }, 'In segment'), sel, tools(node, replace));
    }
    function groupEl(node, replace, depth) {
      const body = h('div', { class: 'group-body' });
      node.conditions.forEach((c, i) => {
        if (i > 0) body.append(h('div', { class: 'connector' }, String(node.operator).toUpperCase()));
        body.append(nodeEl(c, (r) => { if (r === undefined) node.conditions.splice(i, 1); else node.conditions[i] = r; redraw(); changed(); }, depth + 1));
      });
      if (!node.conditions.length) body.append(h('div', { class: 'muted small' }, 'No conditions: an empty AND matches everyone, an empty OR no one.'));
      const op = h('select', { 'aria-label': 'match', class: 'f-group-op' }, h('option', { value: 'AND' }, 'all'), h('option', { value: 'OR' }, 'any'));
      op.value = String(node.operator).toUpperCase();
      op.addEventListener('change', () => { node.operator = op.value; redraw(); changed(); });
      const add = (n) => () => { node.conditions.push(n()); redraw(); changed(); };
      return h('div', { class: 'group', 'data-depth': depth },
        h('div', { class: 'group-head' },
          h('span', { class: 'title' }, depth ? 'Match' : 'Users who match'), op, h('span', { class: 'title' }, 'of these'),
          h('span', { class: 'row', style: 'margin-left:auto;gap:4px' },
            h('button', { class: 'small', 'data-add': 'attribute', onclick: add(() => ({ field: ctx.fields[0] || 'age', op: 'eq', value: '' })) }, '+ Attribute'),
            h('button', { class: 'small', 'data-add': 'behavior', onclick: add(() => ({ event: ctx.events[0] || 'order_placed', agg: 'count', within: '30d', op: 'gte', value: 1 })) }, '+ Behavior'),
            ctx.segments.length ? h('button', { class: 'small', 'data-add': 'segment', onclick: add(() => ({ segment: ctx.segments[0].id })) }, '+ Segment') : null,
            h('button', { class: 'small', 'data-add': 'group', onclick: add(() => ({ operator: node.operator === 'AND' ? 'OR' : 'AND', conditions: [] })) }, '+ Group'),
            depth ? tools(node, replace) : null)),
        body);
    }
    function nodeEl(node, replace, depth) {
      switch (kindOf(node)) {
        case 'group': return groupEl(node, replace, depth);
        case 'not': return h('div', { class: 'group not' },
          h('div', { class: 'group-head' }, h('span', { class: 'title' }, 'NOT'),
            h('span', { class: 'row', style: 'margin-left:auto;gap:4px' },
              h('button', { class: 'ghost small', onclick: () => replace(node.not) }, 'Remove NOT'),
              h('button', { class: 'ghost small', 'aria-label': 'Remove condition', onclick: () => replace(undefined) }, '✕'))),
          nodeEl(node.not, (r) => (r === undefined ? replace(undefined) : (node.not = r, redraw(), changed())), depth + 1));
        case 'attribute': return fieldRow(node, replace, 'Attribute');
        case 'behavior': return behaviorRow(node, replace);
        case 'segment': return segmentRow(node, replace);
        default: return h('div', { class: 'cond' }, h('code', null, compact(node)));
      }
    }
    redraw();
    return {
      el: root,
      set(r) { rule = r; redraw(); },
    };
  }

  async function segmentEditor(id) {
    const existing = id ? await get(`/v1/segments/${enc(id)}`) : null;
    const [schema, types, segs, recent] = await Promise.all([
      optional('/v1/attributes/schema', { attributes: {} }),
      optional('/v1/event-types', { event_types: [] }),
      get('/v1/segments'),
      optional('/v1/events?order=desc&limit=300', { events: [] }),
    ]);
    const sample = recent.events[0] ? await optional(`/v1/users/${enc(recent.events[0].user_id)}`, null) : null;
    const fieldTypes = {};
    for (const [k, v] of Object.entries(schema.attributes || {})) fieldTypes[k] = v.type;
    const fields = [...new Set([...Object.keys(fieldTypes), ...Object.keys((sample && sample.attributes) || {}), ...COMPUTED])];
    const events = [...new Set([...types.event_types.map((t) => t.name), ...recent.events.map((e) => e.name)])].sort();
    const ctx = { fields, events, types: fieldTypes, segments: segs.segments.filter((x) => x.id !== id) };
    const isStatic = existing && existing.kind === 'static';
    let rule = existing && existing.rules ? existing.rules : { operator: 'AND', conditions: [] };

    const name = h('input', { id: 'seg-name', value: existing ? existing.name : '', placeholder: 'e.g. Lapsed big spenders', 'data-ptr': '/name' });
    const desc = h('input', { id: 'seg-desc', value: existing ? existing.description || '' : '', placeholder: 'What this segment is for', 'data-ptr': '/description' });
    const kindSel = h('select', { id: 'seg-kind', disabled: !!existing }, h('option', { value: 'dynamic' }, 'Dynamic: by rules'), h('option', { value: 'static' }, 'Static: a list of user ids'));
    kindSel.value = isStatic ? 'static' : 'dynamic';
    const jsonArea = h('textarea', { id: 'rule-json', spellcheck: 'false', 'aria-label': 'Rule as JSON', 'data-ptr': '/rules' });
    const jsonError = h('div', { class: 'small', style: 'min-height:18px;margin-top:6px' });
    const count = h('div', { class: 'preview-count', id: 'preview-count' }, '…');
    const countNote = h('div', { class: 'muted' }, 'users match right now');
    const previewErr = h('div');
    const previewIds = h('div', { class: 'row', style: 'margin-top:10px' });
    const sqlBox = h('pre', { class: 'sql', id: 'preview-sql' }, '');
    const idsArea = h('textarea', { id: 'seg-ids', rows: 10, placeholder: 'one user id per line (or comma-separated)', 'data-ptr': '/user_ids' });
    const formError = h('div');
    let builder;
    const builderBox = h('div');
    const unsupported = h('div', { class: 'alert info hidden' }, 'This rule uses a form the visual editor does not draw (e.g. the DuckMart or attribute-map form). Edit it as JSON; the preview still works.');

    let seq = 0;
    const preview = debounce(async () => {
      const mine = ++seq;
      previewErr.replaceChildren();
      try {
        const r = await api('POST', '/v1/segments/query', { rules: rule, limit: 8, include_sql: true });
        if (mine !== seq) return;
        count.textContent = fmtInt(r.total_count);
        countNote.textContent = r.total_count === 1 ? 'user matches right now' : 'users match right now';
        previewIds.replaceChildren(...r.user_ids.map((u) => h('a', { class: 'button small', href: `/users/${enc(u)}`, target: '_blank' }, u)));
        sqlBox.textContent = r.sql ? `${r.sql.sql}\n\n-- parameters: ${JSON.stringify(r.sql.params)}` : '';
      } catch (e) {
        if (mine !== seq) return;
        count.textContent = '–';
        previewErr.replaceChildren(alertBox(e));
      }
    }, 300);
    const fromBuilder = (r) => { rule = r; jsonArea.value = json(rule); jsonError.textContent = ''; preview(); };
    builder = ruleBuilder(rule, ctx, fromBuilder);
    builderBox.append(builder.el);
    jsonArea.value = json(rule);
    const showDrawable = () => {
      const ok = drawable(rule);
      builderBox.classList.toggle('hidden', !ok);
      unsupported.classList.toggle('hidden', ok);
    };
    jsonArea.addEventListener('input', () => {
      let parsed;
      try { parsed = JSON.parse(jsonArea.value); } catch (e) {
        jsonError.replaceChildren(h('span', { style: 'color:var(--bad)' }, 'Not valid JSON yet: ' + e.message));
        return;
      }
      jsonError.replaceChildren(h('span', { class: 'muted' }, 'Valid JSON'));
      rule = parsed;
      if (drawable(rule)) builder.set(rule);
      showDrawable();
      preview();
    });
    showDrawable();

    const save = h('button', { class: 'primary', id: 'save-segment' }, existing ? 'Save changes' : 'Create segment');
    save.addEventListener('click', async () => {
      showFormError(formError, null);
      const body = { name: name.value.trim(), description: desc.value.trim() || null };
      try {
        let out;
        if (kindSel.value === 'static' && !existing) {
          body.user_ids = idsArea.value.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
          out = await api('POST', '/v1/segments', body);
        } else if (existing) {
          if (!isStatic) body.rules = rule;
          out = await api('PATCH', `/v1/segments/${enc(id)}`, body);
        } else {
          body.rules = rule;
          out = await api('POST', '/v1/segments', body);
        }
        location.href = `/segments/${enc(out.id)}`;
      } catch (e) {
        showFormError(formError, e);
      }
    });

    const dynamicPart = h('div', { class: 'editor-grid' },
      h('div', { class: 'stack' },
        card('Rule builder', [unsupported, builderBox], { id: 'builder-card' }),
        card('Live preview', [h('div', { class: 'row' }, h('div', null, count, countNote)), previewErr, previewIds,
          h('h3', { style: 'margin-top:16px' }, 'Generated SQL (SQLite)'), sqlBox], { id: 'preview-card' })),
      card('JSON', [jsonArea, jsonError, h('div', { class: 'muted small' }, 'Both sides edit the same rule: change either one.')], { cls: 'json-pane' }));
    const staticPart = card('Members', [idsArea, h('div', { class: 'help muted small' }, 'Unknown users are created. Members can be added or removed later through the API.')]);
    const kindChanged = () => {
      const st = kindSel.value === 'static';
      dynamicPart.classList.toggle('hidden', st);
      staticPart.classList.toggle('hidden', !st || !!existing);
    };
    kindSel.addEventListener('change', kindChanged);
    render(
      head(existing ? `Edit ${existing.name}` : 'New segment', {
        crumbs: [h('a', { href: '/segments' }, 'Segments'), ' / ', existing ? h('a', { href: `/segments/${enc(id)}` }, existing.name) : 'New'],
        actions: [h('a', { class: 'button', href: existing ? `/segments/${enc(id)}` : '/segments' }, 'Cancel'), save],
      }),
      formError,
      card(null, h('div', { class: 'grid three' },
        h('div', { class: 'field' }, h('label', { for: 'seg-name' }, 'Name'), name),
        h('div', { class: 'field' }, h('label', { for: 'seg-desc' }, 'Description'), desc),
        h('div', { class: 'field' }, h('label', { for: 'seg-kind' }, 'Kind'), kindSel))),
      h('div', { style: 'margin-top:18px' }, isStatic ? card(null, h('p', { class: 'muted' }, 'A static segment: its members are managed through the API.')) : [dynamicPart, staticPart]),
      h('datalist', { id: 'dl-fields' }, fields.map((f) => h('option', { value: f }))),
      h('datalist', { id: 'dl-events' }, events.map((f) => h('option', { value: f }))));
    kindChanged();
    if (!isStatic) preview();
  }

  // ---------------------------------------------------------------- users
  async function usersLookup() {
    const input = h('input', { id: 'user-id', placeholder: 'user id, e.g. 42', 'aria-label': 'User id', autofocus: true });
    const form = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); if (input.value.trim()) location.href = `/users/${enc(input.value.trim())}`; } },
      h('div', { class: 'grow' }, input), h('button', { class: 'primary', type: 'submit' }, 'Look up'));
    const recentBox = h('div', null, h('p', { class: 'muted', style: 'padding:16px 20px' }, 'Loading…'));
    render(head('Users', { sub: 'Attributes, computed fields, segments with the reason for each, experiments and recent events.' }),
      card('Look up a user', form),
      h('div', { style: 'margin-top:18px' }, card('Recently active', recentBox, { cls: 'flush' })));
    input.focus();
    try {
      const { events } = await get('/v1/events?order=desc&limit=200');
      const seen = new Map();
      for (const e of events) if (!seen.has(e.user_id)) seen.set(e.user_id, e);
      recentBox.replaceChildren(table(['User', 'Last event', 'At (UTC)'],
        [...seen.values()].slice(0, 15).map((e) => [h('a', { href: `/users/${enc(e.user_id)}` }, e.user_id), h('code', null, e.name), fmtTime(e.timestamp)]),
        'No events yet.'));
    } catch (e) {
      recentBox.replaceChildren(alertBox(e));
    }
  }

  function explainTree(node) {
    const mark = h('span', { class: 'mark ' + (node.result ? 'yes' : 'no') }, node.result ? '✓' : '✕');
    let text;
    switch (node.type) {
      case 'and': text = h('strong', null, 'ALL of'); break;
      case 'or': text = h('strong', null, 'ANY of'); break;
      case 'not': text = h('strong', null, 'NOT'); break;
      case 'behavior': {
        const agg = node.agg === 'count' ? 'count' : `${node.agg}${node.property ? '(' + node.property + ')' : ''}`;
        const win = node.within_seconds ? ` in the last ${fmtDuration(node.within_seconds)}` : '';
        text = h('span', null, h('code', null, node.field || `${agg} of ${node.event}`), ` ${agg !== 'count' || node.field ? '' : ''}`, h('span', { class: 'muted' }, ` (${node.event}${win})`),
          ` ${OP_LABEL[node.op] || node.op} `, h('code', null, compact(node.value)),
          h('span', { class: 'muted' }, ' — saw ', node.missing ? 'nothing (missing)' : h('code', null, compact(node.actual))));
        break;
      }
      case 'segment': text = h('span', null, 'in segment ', h('a', { href: `/segments/${enc(node.segment || node.segment_id || '')}` }, node.segment || node.segment_id)); break;
      default:
        if (node.field !== undefined) {
          text = h('span', null, h('code', null, node.field), ` ${OP_LABEL[node.op] || node.op || ''} `, node.value !== undefined ? h('code', null, compact(node.value)) : null,
            h('span', { class: 'muted' }, ' — saw ', node.missing ? 'nothing (missing)' : h('code', null, compact(node.actual))));
        } else {
          text = h('code', null, node.type || compact(node));
        }
    }
    return h('li', null, mark, text, node.children && node.children.length ? h('ul', { class: 'tree' }, node.children.map(explainTree)) : node.child ? h('ul', { class: 'tree' }, explainTree(node.child)) : null);
  }

  function fmtComputed(k, v) {
    if (v == null) return '–';
    if (k === 'ltv') return fmtNum(v, 2);
    if (k.startsWith('seconds_since')) return `${fmtDuration(v)} (${fmtNum(v, 0)} s)`;
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    return typeof v === 'number' ? fmtNum(v) : String(v);
  }

  async function userPage(id) {
    let user;
    try {
      user = await get(`/v1/users/${enc(id)}`);
    } catch (e) {
      if (e.status !== 404) throw e;
      render(head(id, { crumbs: [h('a', { href: '/users' }, 'Users'), ' / ', id] }), alertBox(`No user "${id}".`, 'warn'), h('a', { href: '/users' }, '← Look up another user'));
      return;
    }
    const [segs, memberships, assignments, events] = await Promise.all([
      get('/v1/segments'),
      optional(`/v1/users/${enc(id)}/memberships`, { memberships: [] }),
      optional(`/v1/users/${enc(id)}/assignments`, { assignments: [] }),
      optional(`/v1/events?user_id=${enc(id)}&order=desc&limit=25`, { events: [] }),
    ]);
    const names = new Map(segs.segments.map((x) => [x.id, x.name]));
    const inSet = new Set(user.segments || []);
    const segItem = (x) => {
      const d = h('details', { class: 'seg', 'data-segment': x.id },
        h('summary', null, h('span', { class: 'mark ' + (inSet.has(x.id) ? 'yes' : 'no') }, inSet.has(x.id) ? '✓' : '✕'), x.name, ' ', h('span', { class: 'muted small' }, x.kind === 'static' ? 'static list' : 'why?')));
      let loaded = false;
      d.addEventListener('toggle', async () => {
        if (!d.open || loaded) return;
        loaded = true;
        const box = h('div', { class: 'muted' }, 'Explaining…');
        d.append(box);
        try {
          const ex = await get(`/v1/users/${enc(id)}/segments/${enc(x.id)}/explain`);
          box.replaceWith(h('ul', { class: 'tree' }, explainTree(ex.tree)));
        } catch (e) {
          box.replaceWith(alertBox(e));
        }
      });
      return d;
    };
    const member = segs.segments.filter((x) => inSet.has(x.id));
    const notMember = segs.segments.filter((x) => !inSet.has(x.id));
    const attrs = Object.entries(user.attributes || {});
    const computed = Object.entries(user.computed || {});
    render(
      head(user.user_id, { crumbs: [h('a', { href: '/users' }, 'Users'), ' / ', user.user_id], sub: `Created ${fmtTime(user.created_at)} UTC · updated ${fmtTime(user.updated_at)} UTC` }),
      h('div', { class: 'grid two' },
        card('Attributes', attrs.length ? kv(attrs.map(([k, v]) => [k, typeof v === 'object' ? compact(v) : String(v)])) : h('p', { class: 'muted' }, 'No attributes.')),
        card('Computed fields', computed.length ? kv(computed.map(([k, v]) => [k, fmtComputed(k, v)])) : h('p', { class: 'muted' }, 'None.'))),
      h('div', { class: 'grid two', style: 'margin-top:18px' },
        card(`Segments (${member.length} of ${segs.segments.length})`, [
          member.length ? member.map(segItem) : h('p', { class: 'muted' }, 'In no segment.'),
          notMember.length ? h('details', { class: 'seg', style: 'margin-top:12px' }, h('summary', null, `Not in ${notMember.length} segments: why not?`), h('div', { style: 'margin-top:8px' }, notMember.map(segItem))) : null,
        ], { id: 'user-segments' }),
        card('Experiments', table(['Experiment', 'Variant', 'Status', 'Exposed at (UTC)'],
          assignments.assignments.map((a) => [
            h('a', { href: `/experiments/${enc(a.experiment_id)}` }, a.name || a.experiment_id),
            badge(a.variant, 'completed'), a.status ? badge(a.status) : '–', fmtTime(a.assigned_at)]),
          'Not exposed to any experiment yet. (Looking here exposes no one.)'), { cls: 'flush' })),
      h('div', { class: 'grid two', style: 'margin-top:18px' },
        card('Recent events', table(['At (UTC)', 'Event', 'Properties'],
          events.events.map((e) => [h('span', { class: 'nowrap' }, fmtTime(e.timestamp)), h('code', null, e.name), h('span', { class: 'mono small' }, compact(e.properties))]),
          'No events.'), { cls: 'flush' }),
        card('Membership history', table(['Segment', 'Entered (UTC)', 'Exited (UTC)'],
          memberships.memberships.slice(0, 25).map((m) => [h('a', { href: `/segments/${enc(m.segment_id)}` }, names.get(m.segment_id) || m.segment_id), fmtTime(m.entered_at), m.exited_at ? fmtTime(m.exited_at) : badge('member', 'good')]),
          'No membership changes recorded.'), { cls: 'flush' })));
  }

  // ---------------------------------------------------------------- experiments
  const STATUSES = ['running', 'draft', 'paused', 'completed', 'archived'];
  const NEXT = { draft: [['start', 'Start', 'primary']], running: [['pause', 'Pause', ''], ['complete', 'Complete', '']], paused: [['resume', 'Resume', 'primary'], ['complete', 'Complete', '']], completed: [['archive', 'Archive', '']], archived: [] };

  async function experimentsList() {
    const [{ experiments }, segs] = await Promise.all([get('/v1/experiments'), get('/v1/segments')]);
    const names = new Map(segs.segments.map((x) => [x.id, x.name]));
    const counts = Object.fromEntries(STATUSES.map((st) => [st, experiments.filter((e) => e.status === st).length]));
    const wanted = new URLSearchParams(location.search).get('status');
    let current = wanted || (counts.running ? 'running' : 'all');
    const box = h('div');
    const tabs = h('div', { class: 'tabs', role: 'tablist' });
    const draw = () => {
      tabs.replaceChildren(...['all', ...STATUSES].map((st) => h('button', {
        class: st === current ? 'active' : null, role: 'tab', 'data-status': st,
        onclick: () => { current = st; history.replaceState(null, '', st === 'all' ? '/experiments' : `/experiments?status=${st}`); draw(); },
      }, st[0].toUpperCase() + st.slice(1), ' ', h('span', { class: 'count' }, st === 'all' ? experiments.length : counts[st]))));
      const shownList = experiments.filter((e) => current === 'all' || e.status === current)
        .sort((a, b) => STATUSES.indexOf(a.status) - STATUSES.indexOf(b.status) || b.updated_at.localeCompare(a.updated_at));
      box.replaceChildren(table(['Experiment', 'Status', 'Variants', { label: 'Coverage', num: true }, 'Targeting', 'Schedule (UTC)', ''],
        shownList.map((e) => ({
          attrs: { 'data-experiment': e.id },
          cells: [
            h('div', null, h('a', { href: `/experiments/${enc(e.id)}` }, e.name), h('div', { class: 'desc mono' }, e.key)),
            badge(e.status),
            h('div', null, weightBar(e.variants), h('div', { class: 'desc' }, e.variants.map((v) => `${v.key} ${v.weight}%`).join(' · '))),
            fmtPct(e.coverage, 0),
            e.segment_ids.length ? e.segment_ids.map((x) => names.get(x) || x).join(', ') : e.rules ? 'inline rules' : h('span', { class: 'muted' }, 'everyone'),
            h('span', { class: 'small' }, e.start_at ? fmtTime(e.start_at) : '–', ' → ', e.end_at ? fmtTime(e.end_at) : '–'),
            e.status !== 'draft' ? h('a', { href: `/experiments/${enc(e.id)}/results` }, 'Results →') : null,
          ],
        })), current === 'all' ? 'No experiments yet.' : `No ${current} experiments.`));
    };
    draw();
    render(head('Experiments', { sub: `${experiments.length} experiments`, actions: can('edit') ? h('a', { class: 'button primary', href: '/experiments/new' }, '+ New experiment') : null }),
      tabs, card(null, box, { cls: 'flush' }));
  }

  function toLocalInput(iso) { return iso ? new Date(iso).toISOString().slice(0, 16) : ''; }
  function fromLocalInput(v) { return v ? new Date(v + ':00Z').toISOString() : null; }

  async function experimentEditor(id) {
    const existing = id ? await get(`/v1/experiments/${enc(id)}`) : null;
    const { segments } = await get('/v1/segments');
    const e = existing || { key: '', name: '', description: '', variants: [{ key: 'control', name: 'Control', weight: 50, is_control: true, payload: null }, { key: 'treatment', name: 'Treatment', weight: 50, is_control: false, payload: null }], segment_ids: [], rules: null, coverage: 1, sticky: true, hash_version: 2, hash_attribute: 'user_id', namespace: null };
    const variants = e.variants.map((v) => ({ ...v }));
    const key = h('input', { id: 'exp-key', value: e.key, placeholder: 'checkout-button-color', disabled: !!existing, 'data-ptr': '/key' });
    const name = h('input', { id: 'exp-name', value: e.name, placeholder: 'Checkout button colour', 'data-ptr': '/name' });
    const desc = h('input', { id: 'exp-desc', value: e.description || '', placeholder: 'Hypothesis: …', 'data-ptr': '/description' });
    const coverage = h('input', { id: 'exp-coverage', type: 'number', min: 0, max: 100, step: 1, value: Math.round(e.coverage * 1000) / 10, 'data-ptr': '/coverage' });
    const coverageRange = h('input', { type: 'range', min: 0, max: 100, step: 1, value: Math.round(e.coverage * 100), 'aria-label': 'coverage slider' });
    coverage.addEventListener('input', () => { coverageRange.value = coverage.value; });
    coverageRange.addEventListener('input', () => { coverage.value = coverageRange.value; });
    const rules = h('textarea', { id: 'exp-rules', rows: 4, placeholder: '{"field": "country", "op": "eq", "value": "IN"}', 'data-ptr': '/rules', value: e.rules ? json(e.rules) : '' });
    const segBoxes = segments.map((x) => h('label', { class: 'check' }, h('input', { type: 'checkbox', value: x.id, checked: e.segment_ids.includes(x.id), 'data-segment': x.id }), x.name, h('span', { class: 'muted small' }, ` ${fmtInt(x.size)} members`)));
    const nsId = h('input', { id: 'ns-id', value: e.namespace ? e.namespace.id : '', placeholder: 'e.g. checkout', 'data-ptr': '/namespace' });
    const nsStart = h('input', { id: 'ns-start', type: 'number', min: 0, max: 1, step: 0.01, value: e.namespace ? e.namespace.start : 0 });
    const nsEnd = h('input', { id: 'ns-end', type: 'number', min: 0, max: 1, step: 0.01, value: e.namespace ? e.namespace.end : 1 });
    const startAt = h('input', { id: 'exp-start', type: 'datetime-local', value: toLocalInput(e.start_at), 'data-ptr': '/start_at' });
    const endAt = h('input', { id: 'exp-end', type: 'datetime-local', value: toLocalInput(e.end_at), 'data-ptr': '/end_at' });
    const sticky = h('input', { id: 'exp-sticky', type: 'checkbox', checked: e.sticky });
    const hashAttr = h('input', { id: 'exp-hash-attr', value: e.hash_attribute || 'user_id', 'data-ptr': '/hash_attribute' });
    const seed = h('input', { id: 'exp-seed', value: existing ? e.seed : '', placeholder: 'default: the key', disabled: !!existing, 'data-ptr': '/seed' });
    const vBody = h('tbody');
    const sum = h('span', { class: 'badge' });
    const drawVariants = () => {
      vBody.replaceChildren(...variants.map((v, i) => {
        const k = h('input', { value: v.key, 'aria-label': `variant ${i + 1} key`, class: 'v-key', 'data-ptr': `/variants/${i}/key` });
        const n = h('input', { value: v.name || '', 'aria-label': `variant ${i + 1} name`, 'data-ptr': `/variants/${i}/name` });
        const w = h('input', { type: 'number', min: 0, max: 100, step: 'any', value: v.weight, 'aria-label': `variant ${i + 1} weight`, class: 'v-weight', style: 'width:90px', 'data-ptr': `/variants/${i}/weight` });
        const c = h('input', { type: 'radio', name: 'control', checked: !!v.is_control, 'aria-label': `variant ${i + 1} is control` });
        const p = h('input', { value: v.payload == null ? '' : JSON.stringify(v.payload), placeholder: '{"color": "green"}', 'aria-label': `variant ${i + 1} payload`, class: 'mono', 'data-ptr': `/variants/${i}/payload` });
        k.addEventListener('input', () => { v.key = k.value.trim(); });
        n.addEventListener('input', () => { v.name = n.value; });
        w.addEventListener('input', () => { v.weight = parseFloat(w.value); updateSum(); });
        c.addEventListener('change', () => { variants.forEach((x) => { x.is_control = x === v; }); });
        p.addEventListener('input', () => { v.payloadText = p.value; });
        return h('tr', null, h('td', null, k), h('td', null, n), h('td', null, w, ' %'), h('td', null, c), h('td', null, p),
          h('td', null, variants.length > 2 ? h('button', { class: 'ghost small', 'aria-label': 'Remove variant', onclick: () => { variants.splice(i, 1); drawVariants(); } }, '✕') : null));
      }));
      updateSum();
    };
    const updateSum = () => {
      const total = variants.reduce((a, v) => a + (isFinite(v.weight) ? v.weight : 0), 0);
      sum.textContent = `Σ ${fmtNum(total, 2)}%`;
      sum.className = 'badge ' + (Math.abs(total - 100) < 1e-6 ? 'good' : 'bad');
    };
    drawVariants();
    const split = () => { const w = Math.floor((100 / variants.length) * 100) / 100; variants.forEach((v, i) => { v.weight = i === variants.length - 1 ? Math.round((100 - w * (variants.length - 1)) * 100) / 100 : w; }); drawVariants(); };
    const formError = h('div');
    const save = h('button', { class: 'primary', id: 'save-experiment' }, existing ? 'Save changes' : 'Create experiment');
    save.addEventListener('click', async () => {
      showFormError(formError, null);
      const fail = (msg, ptr) => { const err = new Error(msg); err.field = ptr; throw err; };
      try {
        const body = {
          name: name.value.trim(),
          description: desc.value.trim() || null,
          variants: variants.map((v, i) => {
            let payload = v.payload == null ? null : v.payload;
            if (v.payloadText !== undefined) {
              if (!v.payloadText.trim()) payload = null;
              else { try { payload = JSON.parse(v.payloadText); } catch (_) { fail(`Variant ${v.key || i + 1}: the payload is not valid JSON`, `/variants/${i}/payload`); } }
            }
            return { key: v.key, name: v.name || null, weight: v.weight, is_control: !!v.is_control, payload };
          }),
          segment_ids: segBoxes.map((l) => l.querySelector('input')).filter((x) => x.checked).map((x) => x.value),
          coverage: parseFloat(coverage.value) / 100,
          sticky: sticky.checked,
          hash_attribute: hashAttr.value.trim() || 'user_id',
          start_at: fromLocalInput(startAt.value),
          end_at: fromLocalInput(endAt.value),
        };
        if (rules.value.trim()) { try { body.rules = JSON.parse(rules.value); } catch (_) { fail('The targeting rule is not valid JSON', '/rules'); } } else body.rules = null;
        if (nsId.value.trim()) body.namespace = { id: nsId.value.trim(), start: parseFloat(nsStart.value), end: parseFloat(nsEnd.value) };
        else body.namespace = null;
        let out;
        if (existing) out = await api('PATCH', `/v1/experiments/${enc(id)}`, body);
        else {
          body.key = key.value.trim();
          if (seed.value.trim()) body.seed = seed.value.trim();
          out = await api('POST', '/v1/experiments', body);
        }
        location.href = `/experiments/${enc(out.id)}`;
      } catch (err) {
        showFormError(formError, err);
        window.scrollTo(0, 0);
      }
    });
    render(
      head(existing ? `Edit ${existing.name}` : 'New experiment', {
        crumbs: [h('a', { href: '/experiments' }, 'Experiments'), ' / ', existing ? h('a', { href: `/experiments/${enc(id)}` }, existing.name) : 'New'],
        sub: existing && existing.status !== 'draft' ? `This experiment is ${existing.status}: sticky users keep their variants when weights or targeting change.` : null,
        actions: [h('a', { class: 'button', href: existing ? `/experiments/${enc(id)}` : '/experiments' }, 'Cancel'), save],
      }),
      formError,
      h('div', { class: 'stack' },
        card('Basics', h('div', { class: 'grid three' }, field('Key', key, 'Stable id used by SDKs and in hashing.'), field('Name', name), field('Description', desc))),
        card('Variants', [h('div', { class: 'table-wrap' }, h('table', null, h('thead', null, h('tr', null, ['Key', 'Name', 'Weight', 'Control', 'Payload (JSON)', ''].map((x) => h('th', null, x)))), vBody)),
          h('div', { class: 'row', style: 'margin-top:12px' },
            h('button', { class: 'small', id: 'add-variant', onclick: () => { variants.push({ key: `variant_${variants.length}`, name: '', weight: 0, is_control: false, payload: null }); drawVariants(); } }, '+ Add variant'),
            h('button', { class: 'small', onclick: split }, 'Split evenly'), sum)]),
        h('div', { class: 'grid two' },
          card('Targeting', [
            h('label', null, 'Segments (a user must be in at least one; none = everyone)'),
            segments.length ? h('div', { class: 'stack', style: 'max-height:220px;overflow:auto;margin-bottom:14px' }, segBoxes) : h('p', { class: 'muted' }, 'No segments yet.'),
            field('Inline rule (optional, JSON)', rules, 'Any rule format; users must also match it.'),
          ]),
          card('Allocation', [
            h('div', { class: 'field' }, h('label', { for: 'exp-coverage' }, 'Coverage (% of targeted users in the experiment)'), h('div', { class: 'row' }, h('div', { class: 'grow' }, coverageRange), h('div', { style: 'width:110px' }, coverage))),
            h('div', { class: 'grid three' }, field('Namespace (layer)', nsId, 'Experiments sharing a namespace with disjoint ranges are mutually exclusive.'), field('Range start', nsStart), field('Range end', nsEnd)),
            h('div', { class: 'grid two' }, field('Hash attribute', hashAttr), field('Seed', seed)),
            h('label', { class: 'check' }, sticky, 'Sticky: a user keeps their variant when weights, coverage or targeting change'),
          ])),
        card('Schedule (UTC)', h('div', { class: 'grid two' }, field('Start at', startAt, 'Optional: serving begins at this instant once started.'), field('End at', endAt, 'Optional: serving stops at this instant.')))));
  }

  async function lifecycle(id, action) {
    if ((action === 'complete' || action === 'archive') && !confirm(`${action[0].toUpperCase() + action.slice(1)} this experiment? Users stop being assigned.`)) return;
    try {
      await api('POST', `/v1/experiments/${enc(id)}/${action}`);
      toast(`Experiment ${action === 'start' ? 'started' : action + (action.endsWith('e') ? 'd' : 'ed')}`);
      route();
    } catch (e) {
      toast(e.message, true);
    }
  }

  async function experimentPage(id) {
    const [e, segs] = await Promise.all([get(`/v1/experiments/${enc(id)}`), get('/v1/segments')]);
    const names = new Map(segs.segments.map((x) => [x.id, x.name]));
    const actions = [];
    if (can('edit')) {
      for (const [action, label, cls] of NEXT[e.status] || []) actions.push(h('button', { class: cls, 'data-action': action, onclick: () => lifecycle(id, action) }, label));
      if (e.status !== 'archived') actions.push(h('a', { class: 'button', href: `/experiments/${enc(id)}/edit` }, 'Edit'));
    }
    if (e.status !== 'draft') actions.push(h('a', { class: 'button primary', href: `/experiments/${enc(id)}/results` }, 'Results'));
    render(
      head(e.name, { crumbs: [h('a', { href: '/experiments' }, 'Experiments'), ' / ', e.name], sub: [h('code', null, e.key), ' · ', badge(e.status), e.description ? ' · ' + e.description : ''], actions }),
      h('div', { class: 'grid side' },
        card('Variants', table(['', 'Key', 'Name', { label: 'Weight', num: true }, 'Payload'],
          e.variants.map((v, i) => [swatch(COLORS[i % COLORS.length]), h('span', null, h('code', null, v.key), v.is_control ? [' ', badge('control', 'draft')] : null), v.name || '–', `${fmtNum(v.weight, 2)}%`, h('span', { class: 'mono small' }, compact(v.payload))])), { cls: 'flush' }),
        card('Targeting and allocation', kv([
          ['Segments', e.segment_ids.length ? h('span', null, e.segment_ids.map((x, i) => [i ? ', ' : '', h('a', { href: `/segments/${enc(x)}` }, names.get(x) || x)])) : 'everyone'],
          ['Inline rule', e.rules ? h('code', null, compact(e.rules)) : '–'],
          ['Coverage', fmtPct(e.coverage, 1)],
          ['Namespace', e.namespace ? `${e.namespace.id} [${e.namespace.start}, ${e.namespace.end})` : '–'],
          ['Hashing', `v${e.hash_version} on ${e.hash_attribute}, seed ${e.seed}`],
          ['Sticky', e.sticky ? 'yes' : 'no'],
          ['Bucket version', String(e.bucket_version)],
          ['Schedule (UTC)', `${e.start_at ? fmtTime(e.start_at) : 'any time'} → ${e.end_at ? fmtTime(e.end_at) : 'open-ended'}`],
        ]))),
      h('div', { style: 'margin-top:18px' }, card('History', table(['From', 'To', 'At (UTC)', 'By key'],
        (e.transitions || []).slice().reverse().map((t) => [badge(t.from), badge(t.to), fmtTime(t.at), h('code', null, t.by || '–')]), 'Created; never moved.'), { cls: 'flush' })));
  }

  // ---------------------------------------------------------------- results
  async function resultsPage(id) {
    const [e, metricsList, recent] = await Promise.all([
      get(`/v1/experiments/${enc(id)}`),
      get('/v1/metrics'),
      optional('/v1/events?order=desc&limit=300', { events: [] }),
    ]);
    const metrics = metricsList.metrics || [];
    const params = new URLSearchParams(location.search);
    const eventNames = [...new Set(recent.events.map((x) => x.name))].sort();
    const metricSel = h('select', { id: 'metric', 'aria-label': 'Metric' },
      metrics.map((m) => h('option', { value: 'm:' + m.key }, `${m.name || m.key} (${m.kind}${m.property ? ' of ' + m.property : ''} · ${m.kind === 'ratio' ? `${m.numerator} / ${m.denominator}` : m.event}${m.cuped ? ', CUPED ' + m.cuped.lookback : ''})`)),
      h('option', { value: 'event' }, 'Conversion on an event…'));
    metricSel.value = params.get('event') ? 'event' : params.get('metric') ? 'm:' + params.get('metric') : metrics.length ? 'm:' + metrics[0].key : 'event';
    const eventInput = h('input', { id: 'event', list: 'dl-result-events', value: params.get('event') || (eventNames.includes('order_placed') ? 'order_placed' : eventNames[0] || ''), placeholder: 'event name', 'aria-label': 'Conversion event' });
    const conf = h('select', { id: 'confidence', 'aria-label': 'Confidence level' }, ['0.9', '0.95', '0.99'].map((c) => h('option', { value: c }, `${Math.round(c * 100)}% confidence`)));
    conf.value = params.get('confidence_level') || '0.95';
    const method = h('select', { id: 'method', 'aria-label': 'Method' }, [['welch', 'Welch t-test'], ['z', 'z-test'], ['z_pooled', 'z-test, pooled']].map(([v, l]) => h('option', { value: v }, l)));
    method.value = params.get('method') || 'welch';
    const defaults = e.analysis || {};
    const engine = h('select', { id: 'engine', 'aria-label': 'Engine' }, [['frequentist', 'Frequentist'], ['bayesian', 'Bayesian']].map(([v, l]) => h('option', { value: v }, l)));
    engine.value = params.get('engine') || defaults.engine || 'frequentist';
    const sequential = h('input', { type: 'checkbox', id: 'sequential' });
    sequential.checked = params.has('sequential') ? params.get('sequential') === 'true' : !!defaults.sequential;
    const cuped = h('input', { type: 'checkbox', id: 'cuped' });
    cuped.checked = params.get('cuped') !== 'false';
    const guardrail = h('select', { id: 'guardrail', 'aria-label': 'Guardrail' }, h('option', { value: '' }, 'No guardrail'),
      metrics.filter((m) => m.kind !== 'ratio').map((m) => h('option', { value: m.key }, `Guardrail: ${m.name || m.key}`)));
    guardrail.value = params.get('guardrail') || '';
    const toggles = h('span', { class: 'row small' }, h('label', null, sequential, ' sequential'), h('label', null, cuped, ' CUPED'));
    const out = h('div', { id: 'results' }, h('p', { class: 'muted' }, 'Computing…'));
    const syncEvent = () => eventInput.classList.toggle('hidden', metricSel.value !== 'event');
    syncEvent();
    const load = async () => {
      syncEvent();
      const bayesian = engine.value === 'bayesian';
      method.disabled = bayesian || sequential.checked;
      sequential.disabled = bayesian;
      const q = new URLSearchParams({ confidence_level: conf.value, engine: engine.value });
      if (!bayesian && !sequential.checked) q.set('method', method.value);
      if (!bayesian) q.set('sequential', String(sequential.checked));
      if (!cuped.checked) q.set('cuped', 'false');
      if (guardrail.value) q.set('guardrail', guardrail.value);
      if (metricSel.value === 'event') {
        if (!eventInput.value.trim()) { out.replaceChildren(alertBox('Name the event that counts as a conversion.', 'info')); return; }
        q.set('event', eventInput.value.trim());
      } else q.set('metric', metricSel.value.slice(2));
      history.replaceState(null, '', `${location.pathname}?${q}`);
      out.replaceChildren(h('p', { class: 'muted' }, 'Computing…'));
      try {
        const r = await get(`/v1/experiments/${enc(id)}/results?${q}`);
        out.replaceChildren(resultsView(e, r));
      } catch (err) {
        out.replaceChildren(alertBox(err));
      }
    };
    for (const c of [metricSel, conf, method, engine, sequential, cuped, guardrail]) c.addEventListener('change', load);
    eventInput.addEventListener('change', load);
    const newMetric = can('edit') ? metricForm(eventNames, (m) => { location.search = `?metric=${enc(m.key)}`; }) : null;
    render(
      head(`Results: ${e.name}`, {
        crumbs: [h('a', { href: '/experiments' }, 'Experiments'), ' / ', h('a', { href: `/experiments/${enc(id)}` }, e.name), ' / Results'],
        sub: [badge(e.status), ' ', h('code', null, e.key)],
        actions: [metricSel, eventInput, conf, engine, method, toggles, guardrail],
      }),
      out,
      h('datalist', { id: 'dl-result-events' }, eventNames.map((n) => h('option', { value: n }))),
      h('div', { class: 'grid two', style: 'margin-top:18px' }, planner(e), newMetric));
    await load();
  }

  function resultsView(e, r) {
    const m = r.metrics[0];
    const isRate = m.metric.kind === 'conversion';
    const fmt = isRate ? (x) => fmtPct(x, 2) : (x) => fmtNum(x, 3);
    const variantIndex = new Map(e.variants.map((v, i) => [v.key, i]));
    const color = (k) => COLORS[(variantIndex.has(k) ? variantIndex.get(k) : 0) % COLORS.length];
    const days = m.timeseries.length * (m.bucket_days || 1);
    const parts = [];
    if (r.srm.srm_detected) {
      parts.push(h('div', { class: 'alert', id: 'srm-warning', role: 'alert' },
        h('strong', null, '⚠ Sample ratio mismatch: do not trust these results'),
        `The split of exposed users (${r.srm.observed.map(fmtInt).join(' / ')}) is far from the configured weights (expected ${r.srm.expected.map((x) => fmtNum(x, 0)).join(' / ')}); χ² = ${fmtNum(r.srm.chi2, 2)}, ${pIs(r.srm.p_value)}, below the alarm threshold ${r.srm.threshold}. `,
        'Something assigns or logs users unevenly (a bug, a changed weight, bots). No winner is declared until it is found.'));
    }
    const w = r.winner;
    parts.push(h('div', { class: 'grid four' },
      stat('Exposed users', fmtInt(r.exposed_users), r.excluded_users ? `${fmtInt(r.excluded_users)} in removed variants` : `bucket version ${r.bucket_version}`),
      stat('Days of data', fmtInt(days), r.from ? `from ${fmtDate(r.from)}` : `up to ${fmtDate(r.to)}`),
      stat('Winner', w ? w.key : 'none yet', w ? `${fmtSigned(w.relative_lift, (x) => fmtPct(x, 1))} relative, ${pIs(w.p_value_adjusted)}` : (r.winner_reason || '')),
      stat('Sample ratio', r.srm.srm_detected ? 'MISMATCH' : 'OK', `χ² test ${pIs(r.srm.p_value)} (alarm below ${r.srm.threshold})`)));
    const bayes = r.engine === 'bayesian';
    const risk = (v) => v.relative && v.relative.risk_control != null
      ? h('span', null, `${fmtPct(v.relative.risk_control, 2)} / ${fmtPct(v.relative.risk_treatment, 2)}`, h('div', { class: 'desc' }, 'keep control / ship'))
      : '–';
    const rows = m.variants.map((v) => [
      h('span', null, swatch(color(v.key)), h('strong', null, v.key), v.is_control ? [' ', badge('control', 'draft')] : null),
      fmtInt(v.users),
      isRate ? fmtInt(v.conversions) : fmtNum(v.total, 2),
      h('span', null, h('strong', null, fmt(v.estimate)), h('div', { class: 'desc' }, `[${fmt(v.ci_low)}, ${fmt(v.ci_high)}]`)),
      v.absolute ? h('span', null, fmtSigned(v.absolute.estimate, fmt), h('div', { class: 'desc' }, `[${fmt(v.absolute.ci_low)}, ${fmt(v.absolute.ci_high)}]`)) : '–',
      v.relative ? h('span', null, fmtSigned(v.relative.estimate, (x) => fmtPct(x, 1)), h('div', { class: 'desc' }, `[${fmtPct(v.relative.ci_low, 1)}, ${fmtPct(v.relative.ci_high, 1)}]`)) : (v.is_control ? '–' : h('span', { class: 'muted small' }, v.relative_reason || '–')),
      bayes ? (v.is_control ? '–' : risk(v)) : fmtP(v.p_value_adjusted),
      v.chance_to_win == null ? '–' : fmtPct(v.chance_to_win, 1),
      v.is_control ? '' : v.significant ? badge('significant', 'good') : badge('not significant', 'draft'),
    ]);
    const cl = Math.round(r.confidence_level * 100);
    parts.push(card(`${m.metric.name || m.metric.key}: per variant`, table(['Variant', { label: 'Users', num: true }, { label: isRate ? 'Conversions' : 'Total', num: true }, { label: `${isRate ? 'Rate' : 'Mean'} [${cl}% CI]`, num: true }, { label: 'Abs. lift', num: true }, { label: 'Rel. lift', num: true }, { label: bayes ? 'Risk' : r.sequential_tuning ? 'p (always valid)' : r.metrics[0].variants.length > 2 ? 'p (Holm)' : 'p-value', num: true }, { label: 'Chance to win', num: true }, '']
      , rows), { cls: 'flush', id: 'variant-table' }));
    const adjusted = m.variants.filter((v) => v.cuped);
    if (adjusted.length) {
      parts.push(h('div', { class: 'alert good', id: 'cuped-report', style: 'margin-top:12px' },
        h('strong', null, `CUPED on ${m.metric.cuped ? m.metric.cuped.lookback : 'the pre-period'} before exposure: `),
        adjusted.map((v) => `${v.key}: θ = ${fmtNum(v.cuped.theta, 4)}, variance reduced by ${fmtPct(v.cuped.variance_reduction, 1)}, pre-exposure balance ${pIs(v.cuped.balance_p_value)}`).join('; ')));
    }
    if ((r.guardrails || []).length) {
      const grows = [];
      for (const g of r.guardrails) {
        for (const v of g.variants.filter((x) => !x.is_control)) {
          const lift = v.absolute ? v.absolute.estimate : null;
          const harm = v.significant && lift != null && (g.metric.higher_is_better ? lift < 0 : lift > 0);
          grows.push([g.metric.name || g.metric.key, v.key, v.absolute ? h('span', null, fmtSigned(lift, (x) => fmtNum(x, 3)), h('div', { class: 'desc' }, `[${fmtNum(v.absolute.ci_low, 3)}, ${fmtNum(v.absolute.ci_high, 3)}]`)) : '–',
            harm ? badge('harmed: blocks the winner', 'archived') : badge('ok', 'good')]);
        }
      }
      parts.push(h('div', { style: 'margin-top:12px' }, card('Guardrails', table(['Guardrail', 'Variant', { label: 'Abs. change', num: true }, ''], grows), { cls: 'flush', id: 'guardrails' })));
    }
    const series = m.variants.map((v) => ({
      label: v.key,
      color: color(v.key),
      points: m.timeseries.map((p) => {
        const pv = p.variants.find((x) => x.key === v.key) || {};
        return { x: Date.parse(p.date), y: pv.estimate, lo: pv.ci_low, hi: pv.ci_high };
      }),
    }));
    const liftRows = m.variants.filter((v) => !v.is_control).map((v) => ({
      label: v.key, color: color(v.key), significant: v.significant,
      est: v.relative ? v.relative.estimate : null, lo: v.relative ? v.relative.ci_low : null, hi: v.relative ? v.relative.ci_high : null,
    }));
    const liftSeries = m.variants.filter((v) => !v.is_control).map((v) => ({
      label: `${v.key} vs control`,
      color: color(v.key),
      points: m.timeseries.map((p) => {
        const pv = p.variants.find((x) => x.key === v.key) || {};
        const l = pv.relative_lift || {};
        return { x: Date.parse(p.date), y: l.estimate, lo: l.ci_low, hi: l.ci_high };
      }),
    }));
    parts.push(h('div', { class: 'grid two' },
      card(`Cumulative ${isRate ? 'conversion rate' : 'mean'} per variant, with ${cl}% interval`,
        lineChart({ series, yLabel: isRate ? 'Conversion rate' : `Mean ${m.metric.property || m.metric.event}`, xLabel: 'Day (UTC, cumulative)', yFormat: isRate ? (x) => fmtPct(x, 1) : fmtNum, title: 'cumulative estimate', height: 320 }), { id: 'estimate-chart' }),
      card(`Relative lift vs control, with ${cl}% interval`,
        [intervalChart(liftRows, { xLabel: 'Relative lift (treatment ÷ control − 1)', format: (x) => fmtPct(x, 1) }),
          h('h3', { style: 'margin-top:16px' }, 'Over time'),
          lineChart({ series: liftSeries, yLabel: 'Relative lift', xLabel: 'Day (UTC, cumulative)', yFormat: (x) => fmtPct(x, 0), includeZero: true, height: 220, title: 'relative lift over time' })], { id: 'lift-chart' })));
    parts.push(h('p', { class: 'muted small' }, `Method: ${r.method}, ${cl}% confidence, significance threshold ${fmtNum(r.significance_threshold, 6)}${m.variants.length > 2 ? ', p-values Holm-adjusted' : ''}. Computed ${fmtTime(r.computed_at)} UTC. Filled circles on the lift chart are significant.`));
    return h('div', { class: 'stack' }, parts);
  }

  function planner(e) {
    const baseline = h('input', { id: 'plan-baseline', type: 'number', step: 'any', min: 0, max: 1, value: 0.1 });
    const mde = h('input', { id: 'plan-mde', type: 'number', step: 'any', min: 0, value: 5 });
    const relative = h('input', { id: 'plan-relative', type: 'checkbox', checked: true });
    const alpha = h('input', { id: 'plan-alpha', type: 'number', step: 'any', min: 0, max: 1, value: 0.05 });
    const power = h('input', { id: 'plan-power', type: 'number', step: 'any', min: 0, max: 1, value: 0.8 });
    const out = h('div', { id: 'plan-result', style: 'margin-top:12px' });
    const run = async (ev) => {
      if (ev) ev.preventDefault();
      out.replaceChildren();
      try {
        const rel = relative.checked;
        const body = { baseline_rate: parseFloat(baseline.value), mde: rel ? parseFloat(mde.value) / 100 : parseFloat(mde.value), relative: rel, alpha: parseFloat(alpha.value), power: parseFloat(power.value) };
        const r = await api('POST', '/v1/stats/sample-size', body);
        const arms = e.variants.length;
        out.replaceChildren(h('div', { class: 'alert good' },
          h('strong', null, `${fmtInt(r.n_per_variant)} users per variant`),
          `${fmtInt(r.n_per_variant * arms)} in all for ${arms} variants, to detect ${rel ? mde.value + '% relative' : mde.value + ' absolute'} on a ${fmtPct(body.baseline_rate, 1)} baseline with ${Math.round(body.power * 100)}% power at α = ${body.alpha} (two-sided).`));
      } catch (err) {
        out.replaceChildren(alertBox(err));
      }
    };
    return card('Sample-size planner', h('form', { onsubmit: run },
      h('div', { class: 'grid two' }, field('Baseline conversion rate (0–1)', baseline), field('Minimum detectable effect', mde)),
      h('label', { class: 'check', style: 'margin-bottom:12px' }, relative, 'Effect is relative (% of baseline); untick for absolute (rate points)'),
      h('div', { class: 'grid two' }, field('Significance α', alpha), field('Power', power)),
      h('button', { class: 'primary', type: 'submit', id: 'plan-run' }, 'Compute sample size'), out), { id: 'planner' });
  }

  function metricForm(eventNames, done) {
    const key = h('input', { id: 'metric-key', placeholder: 'revenue', 'data-ptr': '/key' });
    const kind = h('select', { id: 'metric-kind' }, ['conversion', 'count', 'sum', 'mean'].map((k) => h('option', { value: k }, k)));
    const event = h('input', { id: 'metric-event', list: 'dl-result-events', placeholder: 'order_placed' });
    const prop = h('input', { id: 'metric-property', placeholder: 'amount (sum and mean)' });
    const win = h('input', { id: 'metric-window', placeholder: 'e.g. 7d (optional)' });
    const err = h('div');
    const submit = async (ev) => {
      ev.preventDefault();
      err.replaceChildren();
      const body = { key: key.value.trim(), kind: kind.value, event: event.value.trim() };
      if (prop.value.trim()) body.property = prop.value.trim();
      if (win.value.trim()) body.window = win.value.trim();
      try { done(await api('POST', '/v1/metrics', body)); } catch (e) { err.replaceChildren(alertBox(e)); }
    };
    return card('New metric', h('form', { onsubmit: submit }, err,
      h('div', { class: 'grid two' }, field('Key', key), field('Kind', kind)),
      h('div', { class: 'grid three' }, field('Event', event), field('Property', prop), field('Window from exposure', win)),
      h('button', { type: 'submit' }, 'Add metric')));
  }

  // ---------------------------------------------------------------- ingestion
  async function ingestPage() {
    const sourcesBox = h('div');
    const updated = h('span', { class: 'muted small' });
    const [types, schema] = await Promise.all([
      can('read_schemas') ? optional('/v1/event-types', { event_types: [] }) : { event_types: [] },
      can('read_schemas') ? optional('/v1/attributes/schema', { attributes: {} }) : { attributes: {} },
    ]);
    const refresh = async () => {
      try {
        const st = await get('/v1/ingest/status');
        sourcesBox.replaceChildren(table(['Source', { label: 'Received', num: true }, { label: 'Accepted', num: true }, { label: 'Duplicates', num: true }, { label: 'Rejected', num: true }, 'Last event (UTC)', 'Last error'],
          st.sources.map((x) => [h('strong', null, x.source), fmtInt(x.received), fmtInt(x.accepted), fmtInt(x.duplicates), x.rejected ? h('span', { style: 'color:var(--bad)' }, fmtInt(x.rejected)) : '0',
            x.last_event_at ? fmtTime(x.last_event_at) : h('span', { class: 'muted' }, 'never'),
            x.last_error ? h('span', { style: 'color:var(--bad)' }, x.last_error, h('div', { class: 'desc' }, fmtTime(x.last_error_at))) : h('span', { class: 'muted' }, '–')])));
        updated.replaceChildren(h('span', { class: 'live-dot' }), `live · refreshed ${new Date().toLocaleTimeString()}`);
      } catch (e) {
        sourcesBox.replaceChildren(alertBox(e));
      }
    };
    render(head('Ingestion', { sub: 'Events arrive over HTTP, from imports (stratify import) and from Kafka. Import progress shows here as it runs.' }),
      card('Sources', sourcesBox, { cls: 'flush', actions: updated, id: 'sources' }),
      h('div', { class: 'grid two', style: 'margin-top:18px' },
        card('Event types', table(['Event', 'Properties', 'Updated (UTC)'],
          types.event_types.map((t) => [h('div', null, h('code', null, t.name), t.description ? h('div', { class: 'desc' }, t.description) : null),
            h('span', { class: 'small' }, Object.entries(t.properties || {}).map(([k, p]) => `${k}: ${p.type}${p.required ? ' (required)' : ''}`).join(', ') || '–'),
            fmtTime(t.updated_at)]), 'No declared event types: every event name is accepted as sent.'), { cls: 'flush' }),
        card('Attribute schema', table(['Attribute', 'Type'],
          Object.entries(schema.attributes || {}).map(([k, v]) => [h('code', null, k), v.type]), 'No declared attributes: any attribute is accepted.'), { cls: 'flush' })));
    await refresh();
    const timer = setInterval(() => { if (!document.hidden) refresh(); }, 2000);
    window.addEventListener('pagehide', () => clearInterval(timer));
  }

  // ---------------------------------------------------------------- API keys
  async function keysPage() {
    const { api_keys: keys } = await get('/v1/api-keys');
    const name = h('input', { id: 'key-name', placeholder: 'e.g. checkout service', 'data-ptr': '/name' });
    const role = h('select', { id: 'key-role' }, ['viewer', 'editor', 'ops', 'ingest', 'sdk', 'admin'].map((r) => h('option', { value: r }, r)));
    const created = h('div');
    const form = h('form', { class: 'row', onsubmit: async (ev) => {
      ev.preventDefault();
      created.replaceChildren();
      try {
        const k = await api('POST', '/v1/api-keys', { name: name.value.trim(), role: role.value });
        created.replaceChildren(h('div', { class: 'alert good', style: 'margin-top:14px' }, h('strong', null, `Key "${k.name}" (${k.role}) created. Copy it now: it is shown once.`), h('div', { class: 'secret', id: 'new-key' }, k.key)));
        name.value = '';
        listBox.replaceChildren(keyTable((await get('/v1/api-keys')).api_keys));
      } catch (e) { created.replaceChildren(alertBox(e)); }
    } }, h('div', { class: 'grow' }, name), role, h('button', { class: 'primary', type: 'submit' }, 'Create key'));
    const keyTable = (list) => table(['Name', 'Id', 'Role', 'Created (UTC)', 'State', ''],
      list.map((k) => [k.name, h('code', null, k.id), badge(k.role, 'completed'), fmtTime(k.created_at), k.revoked_at ? badge('revoked ' + fmtDate(k.revoked_at), 'archived') : badge('active', 'good'),
        k.revoked_at || k.id === document.body.dataset.keyId ? '' : h('button', { class: 'danger small', onclick: async () => {
          if (!confirm(`Revoke "${k.name}"? Clients using it stop working at once.`)) return;
          try { await api('DELETE', `/v1/api-keys/${enc(k.id)}`); listBox.replaceChildren(keyTable((await get('/v1/api-keys')).api_keys)); toast('Key revoked'); } catch (e) { toast(e.message, true); }
        } }, 'Revoke')]), 'No keys yet.');
    const listBox = h('div', null, keyTable(keys));
    render(head('API keys', { sub: 'Keys are stored as hashes; a key is shown once, when it is created. Roles: admin (everything), editor (segments, experiments, metrics), viewer (read), ops (schemas, ingestion), ingest (users and events), sdk (evaluation).' }),
      card('Create a key', [form, created]),
      h('div', { style: 'margin-top:18px' }, card('Keys', listBox, { cls: 'flush' })));
  }

  // ---------------------------------------------------------------- audit log
  async function auditPage() {
    const target = h('input', { id: 'audit-target', placeholder: 'a segment or experiment id, a metric key, or a kind (segments, api-keys…)' });
    const box = h('div');
    const more = h('div', { class: 'row', style: 'padding:12px' });
    let rows = [];
    const draw = () => box.replaceChildren(table(['When (UTC)', 'Key', 'Action', 'Target', 'What changed'],
      rows.map((e) => [fmtTime(e.at), h('code', null, e.key_id), h('code', null, e.action),
        h('span', null, e.target_kind, e.target_id ? h('code', { style: 'margin-left:6px' }, e.target_id) : null),
        h('details', null, h('summary', null, 'request and answer'), h('pre', { class: 'small' }, JSON.stringify(e.changes, null, 2)))]),
      'No configuration changes recorded yet.'));
    const load = async (cursor) => {
      const q = new URLSearchParams({ limit: '50' });
      if (target.value.trim()) q.set('target', target.value.trim());
      if (cursor) q.set('cursor', cursor);
      const page = await get('/v1/audit?' + q);
      rows = cursor ? rows.concat(page.entries) : page.entries;
      draw();
      more.replaceChildren(page.next_cursor ? h('button', { id: 'audit-more', onclick: () => load(page.next_cursor).catch((e) => toast(e.message, true)) }, 'Older entries') : '');
    };
    const form = h('form', { class: 'row', onsubmit: (ev) => { ev.preventDefault(); load(null).catch((e) => toast(e.message, true)); } },
      h('div', { class: 'grow' }, target), h('button', { class: 'primary', type: 'submit', id: 'audit-filter' }, 'Filter'));
    render(head('Audit log', { sub: 'Every configuration change (segments, experiments and their transitions, metrics, webhooks, keys, schemas), newest first, with the key that made it. Secrets are never recorded.' }),
      card('Filter', form),
      h('div', { style: 'margin-top:18px' }, card('Changes', [box, more], { cls: 'flush', id: 'audit' })));
    await load(null);
  }

  // ---------------------------------------------------------------- router
  const ROUTES = [
    [/^\/$/, overview],
    [/^\/segments$/, segmentsList, 'read'],
    [/^\/segments\/new$/, () => segmentEditor(null), 'edit'],
    [/^\/segments\/([^/]+)\/edit$/, segmentEditor, 'edit'],
    [/^\/segments\/([^/]+)$/, segmentPage, 'read'],
    [/^\/users$/, usersLookup, 'read'],
    [/^\/users\/(.+)$/, userPage, 'read'],
    [/^\/experiments$/, experimentsList, 'read'],
    [/^\/experiments\/new$/, () => experimentEditor(null), 'edit'],
    [/^\/experiments\/([^/]+)\/edit$/, experimentEditor, 'edit'],
    [/^\/experiments\/([^/]+)\/results$/, resultsPage, 'read'],
    [/^\/experiments\/([^/]+)$/, experimentPage, 'read'],
    [/^\/ingest$/, ingestPage, 'ingest'],
    [/^\/keys$/, keysPage, 'keys'],
    [/^\/audit$/, auditPage, 'audit'],
  ];

  async function route() {
    const path = location.pathname.replace(/\/+$/, '') || '/';
    document.querySelectorAll('.nav a').forEach((a) => {
      const n = a.dataset.nav;
      a.classList.toggle('active', n === '/' ? path === '/' : path === n || path.startsWith(n + '/'));
    });
    for (const [re, fn, cap] of ROUTES) {
      const m = path.match(re);
      if (!m) continue;
      if (cap && !can(cap)) {
        render(head('Not allowed'), alertBox(`Your key's role (${document.body.dataset.role}) cannot open this page.`, 'warn'));
        return;
      }
      try {
        await fn(...m.slice(1).map(decodeURIComponent));
      } catch (e) {
        if (e.status === 401) return;
        render(head(e.status === 404 ? 'Not found' : 'Something went wrong'), alertBox(e), h('p', null, h('a', { href: '/' }, '← Overview')));
      }
      return;
    }
    render(head('Not found'), alertBox(`There is no page at ${path}.`, 'warn'));
  }

  get('/health').then((x) => { serverNow = Date.parse(x.now) || Date.now(); }).catch(() => {}).finally(route);
})();
