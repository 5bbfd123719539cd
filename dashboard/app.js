// The page: reads its settings, loads the fleet's history from fv-fleet's API when the page
// came from fv-fleet, connects to the broker over WebSockets with MQTT.js for live updates,
// feeds both to the Fleet and draws it. Drawing builds text and SVG nodes only (no innerHTML),
// so a payload can never inject markup.
import mqtt from './vendor/mqtt.esm.js';
import { Fleet, settings } from './fleet.js';

const $ = (sel) => document.querySelector(sel);

async function fileConfig() {
  // Optional: a config.json beside the page (fv-edge serves one when given --dashboard-broker).
  try {
    const r = await fetch('config.json', { cache: 'no-store' });
    return r.ok ? await r.json() : null;
  } catch {
    return null;
  }
}

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function age(ms) {
  if (ms === null) return '—';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function modelsText(models) {
  return models.map((m) => `${m.name} ${m.version} (${m.precision})`).join(', ') || '—';
}

function drawUnits(fleet, now) {
  const body = $('#units tbody');
  body.replaceChildren();
  const units = [...fleet.units.values()].sort((a, b) => a.key.localeCompare(b.key));
  const hideGone = $('#hide-gone').checked;
  for (const u of units) {
    const tr = document.createElement('tr');
    const health = fleet.health(u, now);
    if (health === 'gone' && hideGone) continue;
    tr.dataset.unit = u.key;
    tr.dataset.state = health;
    cell(tr, u.site);
    cell(tr, u.device);
    const why = health === 'offline' && u.reason ? ` (${u.reason})`
      : (health === 'online' && u.publisher ? ` — ${u.publisher}` : '');
    cell(tr, health + why, `state ${health}${u.publisher ? ' waiting' : ''}`);
    cell(tr, age(u.heartbeatAt === null ? null : now - u.heartbeatAt));
    cell(tr, u.outboxDepth ?? '—', u.outboxDepth > 0 ? 'waiting' : '');
    cell(tr, u.pacsDepth ?? '—', u.pacsDepth > 0 || u.pacs ? 'waiting' : '');
    cell(tr, u.processed ?? '—');
    cell(tr, u.failed ?? '—', u.failed > 0 ? 'waiting' : '');
    cell(tr, modelsText(u.models));
    cell(tr, u.online24h == null ? '—' : `${Math.round(u.online24h * 100)} %`);
    body.appendChild(tr);
  }
}

function drawToday(fleet, now) {
  const body = $('#today tbody');
  body.replaceChildren();
  const perSite = [...fleet.today(now).entries()].sort((a, b) => a[0].localeCompare(b[0]));
  for (const [site, c] of perSite) {
    const tr = document.createElement('tr');
    tr.dataset.site = site;
    cell(tr, site);
    cell(tr, c.fracture);
    cell(tr, c.suspicious);
    cell(tr, c.no_fracture);
    cell(tr, c.not_applicable);
    cell(tr, c.failed);
    body.appendChild(tr);
  }
}

const SVG = 'http://www.w3.org/2000/svg';
const DAYS = 30;

/** One small bar chart per site: results per day over the last 30 site-local days. */
function drawDays(fleet, now) {
  const box = $('#days');
  box.replaceChildren();
  for (const site of fleet.sites()) {
    const series = fleet.series(site, DAYS, now);
    const totals = series.map((d) => d.fracture + d.suspicious + d.no_fracture + d.not_applicable + d.failed);
    const max = Math.max(1, ...totals);
    const fig = document.createElement('figure');
    fig.dataset.site = site;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', `0 0 ${DAYS * 6} 40`);
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', `${site}: results per day, last ${DAYS} days`);
    series.forEach((d, i) => {
      // Stacked: fractures and suspicious at the bottom, where the eye starts.
      let y = 40;
      for (const [k, cls] of [['fracture', 'fracture'], ['suspicious', 'suspicious'],
        ['no_fracture', 'no_fracture'], ['not_applicable', 'not_applicable'],
        ['failed', 'failed']]) {
        if (!d[k]) continue;
        const h = (d[k] / max) * 38;
        const r = document.createElementNS(SVG, 'rect');
        r.setAttribute('x', i * 6);
        r.setAttribute('y', y - h);
        r.setAttribute('width', 5);
        r.setAttribute('height', h);
        r.setAttribute('class', cls);
        const t = document.createElementNS(SVG, 'title');
        t.textContent = `${d.day}: ${d[k]} ${k.replace('_', ' ')}`;
        r.appendChild(t);
        svg.appendChild(r);
        y -= h;
      }
    });
    const cap = document.createElement('figcaption');
    const sum = totals.reduce((a, b) => a + b, 0);
    const fr = series.reduce((a, d) => a + d.fracture, 0);
    cap.textContent = `${site}: ${sum} results, ${fr} fracture, in ${DAYS} days`;
    fig.append(svg, cap);
    box.appendChild(fig);
  }
}

function drawResults(fleet) {
  const body = $('#results tbody');
  body.replaceChildren();
  for (const r of fleet.recent) {
    const tr = document.createElement('tr');
    tr.dataset.result = r.id ?? '';
    tr.dataset.finding = r.finding;
    // The viewer's zone; the date too once the list reaches back past today.
    cell(tr, r.time ? new Date(r.time).toLocaleString() : '—');
    cell(tr, r.site);
    cell(tr, r.device);
    cell(tr, r.finding.replace('_', ' ') + (r.error ? ` (${r.error})` : ''), `finding ${r.finding}`);
    cell(tr, r.probability === null ? '—' : r.probability.toFixed(3));
    cell(tr, r.boxes);
    body.appendChild(tr);
  }
}

function setConnection(state, text) {
  const el = $('#connection');
  el.dataset.state = state;
  el.textContent = text;
}

function drawAll(fleet, now) {
  drawUnits(fleet, now);
  drawToday(fleet, now);
  drawDays(fleet, now);
  drawResults(fleet);
}

async function api(cfg, path) {
  const headers = cfg.token ? { Authorization: `Bearer ${cfg.token}` } : {};
  const r = await fetch(`${cfg.history}${path}`, { headers, cache: 'no-store' });
  if (r.status === 401) throw new Error('the history needs a token: open the page with ?token=…');
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

const pct = (v) => `${(v * 100).toFixed(0)} %`;

/** The drift watch: flagged unit-days first, each figure with its expected interval. */
function drawDrift(report) {
  const section = $('#drift-watch');
  section.hidden = !report.enabled;
  if (!report.enabled) return;
  const body = $('#drift tbody');
  body.replaceChildren();
  for (const d of report.days.filter((x) => x.judgement)) {
    const j = d.judgement;
    const tr = document.createElement('tr');
    tr.dataset.flagged = d.flagged ? 'yes' : 'no';
    tr.dataset.unit = `${d.site}/${d.device}`;
    cell(tr, d.site);
    cell(tr, d.device);
    cell(tr, d.day);
    cell(tr, j.n);
    for (const [f, fmt] of [[j.positive_rate, pct], [j.fracture_rate, pct],
      [j.mean_probability, (v) => v.toFixed(2)], [j.not_applicable_share, pct]]) {
      cell(tr, `${fmt(f.value)} (${fmt(f.expected.low)}–${fmt(f.expected.high)})`, f.outside ? 'drift' : '');
    }
    body.appendChild(tr);
  }
}

/** Loads fv-fleet's history into the fleet; says on the page what it could not. */
async function loadHistory(fleet, cfg) {
  const note = $('#history');
  try {
    const [sites, counts, results, units] = await Promise.all([
      api(cfg, 'sites'), api(cfg, `counts?days=${DAYS + 1}`), api(cfg, 'results?limit=50'), api(cfg, 'units'),
    ]);
    fleet.loadHistory({ sites, counts, results, units });
    // Shown only where fv-fleet runs with --expect (`enabled`).
    api(cfg, 'drift?days=14').then(drawDrift, () => {});
    note.dataset.state = 'loaded';
    note.textContent = `History from fv-fleet: ${results.length} recent results, ${units.length} units, `
      + `counts by each site's day (${sites.map((s) => `${s.site}: ${s.zone}`).join(', ') || 'no sites yet'}).`;
  } catch (e) {
    note.dataset.state = 'error';
    note.textContent = `History unavailable: ${e.message}`;
  }
  drawAll(fleet, Date.now());
}

function connect(cfg, fleet) {
  const client = mqtt.connect(cfg.broker, {
    username: cfg.username,
    password: cfg.password,
    clean: true,
    reconnectPeriod: 2000,
    connectTimeout: 10000,
  });
  client.on('connect', () => {
    setConnection('connected', `connected to ${cfg.broker}`);
    // QoS 1: results are not lost between broker and page while it is connected.
    client.subscribe(fleet.filters(), { qos: 1 });
  });
  client.on('reconnect', () => setConnection('connecting', `reconnecting to ${cfg.broker}…`));
  client.on('close', () => setConnection('disconnected', `disconnected from ${cfg.broker}`));
  client.on('error', (e) => setConnection('error', `${cfg.broker}: ${e.message}`));
  client.on('message', (topic, payload) => {
    const now = Date.now();
    let changed;
    try {
      changed = fleet.apply(topic, payload.toString(), now);
    } catch (e) {
      console.warn(`ignored a message on ${topic}: ${e.message}`);
      return;
    }
    if (changed === 'unit') drawUnits(fleet, now);
    if (changed === 'result') drawAll(fleet, now);
  });
}

async function start(cfg) {
  const fleet = new Fleet(cfg.prefix);
  window.fleet = fleet; // for the browser console
  $('#hide-gone').addEventListener('change', () => drawUnits(fleet, Date.now()));
  if (cfg.history) {
    await loadHistory(fleet, cfg);
  } else {
    const note = $('#history');
    note.dataset.state = 'live-only';
    note.textContent = 'Live only: this page keeps nothing across a reload. fv-fleet serves it '
      + 'with the fleet\'s history.';
  }
  if (cfg.broker) {
    connect(cfg, fleet);
  } else {
    setConnection('history', 'history only: no broker for live updates');
    // No live feed: read the history again now and then.
    setInterval(() => loadHistory(fleet, cfg), 15000);
  }
  // Heartbeat ages and staleness move with the clock, not with messages.
  setInterval(() => drawUnits(fleet, Date.now()), 1000);
}

async function main() {
  const query = new URLSearchParams(location.search);
  const cfg = settings(query, await fileConfig());
  if (cfg.broker || cfg.history) {
    await start(cfg);
    return;
  }
  setConnection('setup', 'no broker configured');
  const form = $('#setup');
  form.hidden = false;
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const q = new URLSearchParams();
    for (const [k, v] of data.entries()) if (v) q.set(k, v);
    // Credentials stay out of the address bar: the rest goes there so the view can be bookmarked.
    const creds = { username: q.get('username') ?? undefined, password: q.get('password') ?? undefined };
    q.delete('username');
    q.delete('password');
    history.replaceState(null, '', `?${q}`);
    form.hidden = true;
    start({ ...settings(q, null), ...creds });
  });
}

main();
