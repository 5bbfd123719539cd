// The page: reads its settings, connects to the broker over WebSockets with MQTT.js, feeds
// messages to the Fleet and draws it. Drawing builds text nodes only (no innerHTML), so a
// payload can never inject markup.
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
  for (const u of units) {
    const tr = document.createElement('tr');
    const health = fleet.health(u, now);
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
    cell(tr, c.failed);
    body.appendChild(tr);
  }
}

function drawResults(fleet) {
  const body = $('#results tbody');
  body.replaceChildren();
  for (const r of fleet.recent) {
    const tr = document.createElement('tr');
    tr.dataset.result = r.id ?? '';
    tr.dataset.finding = r.finding;
    cell(tr, r.time ? new Date(r.time).toLocaleTimeString() : '—');
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

function connect(cfg) {
  const fleet = new Fleet(cfg.prefix);
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
    if (changed === 'result') {
      drawUnits(fleet, now);
      drawToday(fleet, now);
      drawResults(fleet);
    }
  });
  // Heartbeat ages and staleness move with the clock, not with messages.
  setInterval(() => drawUnits(fleet, Date.now()), 1000);
  window.fleet = fleet; // for the browser console
}

async function main() {
  const query = new URLSearchParams(location.search);
  const cfg = settings(query, await fileConfig());
  if (cfg.broker) {
    connect(cfg);
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
    connect({ ...settings(q, null), ...creds });
  });
}

main();
