// The fleet's history, end to end with real parts only: Mosquitto (persistent, with a
// WebSockets listener), fv-fleet storing in SQLite and serving the page, two fv-edge daemons
// that process 10 images, and Debian's Chromium through playwright-core. The page is opened
// only *after* the results were published, so all it shows comes from the history; then it is
// reloaded, and the broker restarted, and nothing may be counted twice.
//
//   FV_EDGE_BIN=target/debug/fv-edge FV_FLEET_BIN=target/debug/fv-fleet node dashboard/tests/fleet-e2e.mjs
//
// Environment as e2e.mjs, plus FV_FLEET_BIN (required). fleet/tests/dashboard.rs runs it as
// part of `cargo test`.
import { copyFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import {
  chromiumArgs, finish, freePort, listening, setup, start, unit, waitFor,
} from './harness.mjs';

const edgeBin = process.env.FV_EDGE_BIN;
const fleetBin = process.env.FV_FLEET_BIN;
if (!edgeBin || !fleetBin) throw new Error('set FV_EDGE_BIN and FV_FLEET_BIN (cargo build)');
const { repo, models, chromiumPath, mosquitto, work, artifacts } = setup('fleet-e2e');
const samples = join(repo, 'tests/data/fracatlas-sample/images');
const TOKEN = 'e2e-token';

async function stats(api) {
  const r = await fetch(`${api}/api/stats`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  if (!r.ok) throw new Error(`GET /api/stats: HTTP ${r.status}`);
  return r.json();
}

let browser;
let page;
let error = null;
try {
  const mqttPort = await freePort();
  const wsPort = await freePort();
  // Running as root, Mosquitto would drop to its own user, which cannot write here.
  const asRoot = process.getuid && process.getuid() === 0;
  const conf = join(work, 'mosquitto.conf');
  writeFileSync(conf, [
    asRoot ? 'user root' : '',
    `listener ${mqttPort} 127.0.0.1`,
    'allow_anonymous true',
    `listener ${wsPort} 127.0.0.1`,
    'protocol websockets',
    'persistence true',
    `persistence_location ${work}/`,
    '',
  ].join('\n'));
  let broker = start('mosquitto', mosquitto, ['-c', conf]);
  await waitFor('mosquitto', 10000, () => listening(mqttPort));

  const fleet = start('fv-fleet', fleetBin, [
    '--mqtt', `mqtt://127.0.0.1:${mqttPort}`, '--db', join(work, 'fleet.sqlite'),
    '--listen', '127.0.0.1:0', '--token', TOKEN, '--client-id', 'fleet-e2e',
    '--dashboard-broker', `ws://127.0.0.1:${wsPort}`, '--site-zone', 'clinic-b=Pacific/Auckland',
  ]);
  let api;
  await waitFor('fv-fleet to listen and subscribe', 30000, () => {
    const m = fleet.log.match(/dashboard and API on (http:\/\/\S+?)\/?\s/);
    if (m) api = m[1];
    return Boolean(m) && fleet.log.includes('subscribed to');
  });

  // Two units, 6 images at clinic-a and 4 at clinic-b.
  const a = unit(edgeBin, work, models, 'clinic-a', 'unit-1', mqttPort);
  const b = unit(edgeBin, work, models, 'clinic-b', 'unit-2', mqttPort);
  const images = ['Fractured', 'Non_fractured']
    .flatMap((d) => readdirSync(join(samples, d)).sort().map((f) => join(samples, d, f)));
  for (let i = 0; i < 10; i++) {
    copyFileSync(images[i % images.length], join((i < 6 ? a : b).watch, `img-${i}.jpg`));
  }
  await waitFor('10 results stored by fv-fleet', 180000, async () => (await stats(api)).results >= 10);
  console.log('10 results stored');

  browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs });
  page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));

  const check = async (when) => {
    await page.locator('#history[data-state="loaded"]').waitFor({ timeout: 20000 });
    await waitFor(`10 results listed (${when})`, 20000,
      async () => (await page.locator('#results tbody tr').count()) === 10);
    const ids = await page.locator('#results tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.result));
    if (new Set(ids).size !== 10) throw new Error(`${when}: listed ids ${ids}`);
    const sum = async (site) => (await page.locator(`#today tr[data-site="${site}"] td`).allTextContents())
      .slice(1).map(Number).reduce((x, y) => x + y, 0);
    const [ca, cb] = [await sum('clinic-a'), await sum('clinic-b')];
    if (ca !== 6 || cb !== 4) throw new Error(`${when}: today clinic-a ${ca}, clinic-b ${cb}`);
    if (await page.locator('#days figure').count() !== 2) throw new Error(`${when}: no per-site charts`);
    console.log(`${when}: 10 results, today clinic-a 6, clinic-b 4`);
  };

  // Opened after the fact: everything it shows is history.
  await page.goto(`${api}/?token=${TOKEN}`);
  await check('first load');
  for (const key of ['clinic-a/unit-1', 'clinic-b/unit-2']) {
    const row = page.locator(`#units tr[data-unit="${key}"][data-state="online"]`);
    await row.waitFor({ timeout: 20000 });
    // Online since fv-fleet first heard of it, minutes ago: close to all of that time.
    const share = parseInt(await row.locator('td').nth(9).textContent(), 10);
    if (!(share >= 50)) throw new Error(`${key}: online share ${share} %`);
  }
  await page.reload();
  await check('after a reload');

  // The broker restarts: the units reconnect and publish their status again; the fleet's
  // session resumes. Nothing is counted twice, in the store or on the page.
  broker.kill('SIGTERM');
  await new Promise((r) => broker.once('exit', r));
  const restartedAt = Date.now();
  broker = start('mosquitto', mosquitto, ['-c', conf]);
  await waitFor('mosquitto again', 10000, () => listening(mqttPort));
  await waitFor('fv-fleet to resume its session', 30000,
    () => (fleet.log.match(/connected to/g) ?? []).length >= 2);
  // Both units beat again after the restart: the fleet's resumed session has delivered
  // whatever the broker held for it before these, so a redelivered result is in by now.
  await waitFor('a heartbeat from each unit after the restart', 30000, async () => {
    const r = await fetch(`${api}/api/units`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    const units = await r.json();
    return units.length === 2 && units.every((u) => u.heartbeat_at && Date.parse(u.heartbeat_at) > restartedAt);
  });
  const after = await stats(api);
  if (after.results !== 10) throw new Error(`after the broker restart the store holds ${after.results}`);
  await page.reload();
  await check('after a broker restart');

  const shot = join(artifacts, 'fleet-e2e.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
  const errors = consoleLines.filter((l) => l.startsWith('error') || l.startsWith('pageerror'));
  // The page's MQTT client logs a failed WebSocket while the broker is down: expected.
  const unexpected = errors.filter((l) => !l.includes('WebSocket'));
  if (unexpected.length) throw new Error(`browser console errors:\n${unexpected.join('\n')}`);
} catch (e) {
  error = e;
}
await finish('fleet-e2e', { error, browser, page, artifacts, work });
