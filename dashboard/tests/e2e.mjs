// End to end, with real parts only: Mosquitto with a WebSockets listener, two real fv-edge
// daemons publishing status, heartbeats and a result, `fv-edge dashboard` serving the page,
// and Debian's Chromium driven by playwright-core.
//
//   FV_EDGE_BIN=target/debug/fv-edge node dashboard/tests/e2e.mjs
//
// Environment: FV_EDGE_BIN (required), FV_MODELS (default models), FV_SAMPLE (an image),
// MOSQUITTO (default: found on PATH or /usr/sbin), CHROMIUM (default /usr/bin/chromium),
// ARTIFACTS (where the screenshot goes; default a temp dir). Exits non-zero on any failure.
// edge/tests/dashboard.rs runs it as part of `cargo test`.
import { copyFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { chromium } from 'playwright-core';
import {
  chromiumArgs, finish, freePort, listening, setup, start, unit as edgeUnit, waitFor,
} from './harness.mjs';

const edgeBin = process.env.FV_EDGE_BIN;
if (!edgeBin) throw new Error('set FV_EDGE_BIN to the fv-edge binary (cargo build -p fv-edge)');
const { repo, models, chromiumPath, mosquitto, work, artifacts } = setup('dashboard-e2e');
const sample = process.env.FV_SAMPLE
  ?? join(repo, 'tests/data/fracatlas-sample/images/Fractured/IMG0002322.jpg');

const unit = (site, device, mqttPort) => edgeUnit(edgeBin, work, models, site, device, mqttPort);

let browser;
let page;
let error = null;
try {
  const mqttPort = await freePort();
  const wsPort = await freePort();
  writeFileSync(join(work, 'mosquitto.conf'), [
    `listener ${mqttPort} 127.0.0.1`,
    'allow_anonymous true',
    `listener ${wsPort} 127.0.0.1`,
    'protocol websockets',
    '',
  ].join('\n'));
  start('mosquitto', mosquitto, ['-c', join(work, 'mosquitto.conf')]);
  await waitFor('mosquitto (mqtt)', 10000, () => listening(mqttPort));
  await waitFor('mosquitto (websockets)', 10000, () => listening(wsPort));

  const server = start('dashboard', edgeBin, ['dashboard', '--listen', '127.0.0.1:0']);
  let pageUrl;
  await waitFor('fv-edge dashboard to print its address', 20000, () => {
    const m = server.log.match(/dashboard on (http:\/\/\S+)/);
    if (m) pageUrl = m[1];
    return Boolean(m);
  });

  const a = unit('clinic-a', 'unit-1', mqttPort);
  const b = unit('clinic-b', 'unit-2', mqttPort);

  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: chromiumArgs,
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(`${pageUrl}?broker=ws://127.0.0.1:${wsPort}`);

  const row = (key) => page.locator(`#units tr[data-unit="${key}"]`);
  // Both units appear, online, with a heartbeat (which carries outbox depth and counts).
  for (const key of ['clinic-a/unit-1', 'clinic-b/unit-2']) {
    await row(key).and(page.locator('[data-state="online"]')).waitFor({ timeout: 60000 });
    await waitFor(`${key}'s heartbeat`, 15000, async () =>
      !(await row(key).locator('td').nth(4).textContent()).includes('—'));
  }
  console.log('both units online with heartbeats');
  // Served by fv-edge, the page says it keeps no history.
  if (await page.locator('#history').getAttribute('data-state') !== 'live-only') {
    throw new Error(`history note: ${await page.locator('#history').textContent()}`);
  }

  // A reading at unit-1 shows in the recent list and in today's counts.
  copyFileSync(sample, join(a.watch, basename(sample)));
  const resultRow = page.locator('#results tbody tr').filter({ hasText: 'unit-1' });
  await resultRow.first().waitFor({ timeout: 60000 });
  const finding = await resultRow.first().getAttribute('data-finding');
  if (!['fracture', 'suspicious', 'no_fracture'].includes(finding)) {
    throw new Error(`result row finding is ${finding}`);
  }
  const today = await page.locator('#today tr[data-site="clinic-a"] td').allTextContents();
  console.log(`result shown: ${finding}; today at clinic-a: ${today.join(' | ')}`);
  const counted = today.slice(1, 4).map(Number).reduce((x, y) => x + y, 0);
  if (counted !== 1 || Number(today[4]) !== 0) throw new Error(`today's counts for clinic-a: ${today}`);
  if (await page.locator('#today tr[data-site="clinic-b"]').count() !== 0) {
    throw new Error('clinic-b has no results today');
  }

  // unit-2 dies (SIGKILL: no goodbye): its last will marks it offline within seconds.
  b.kill('SIGKILL');
  const killedAt = Date.now();
  await row('clinic-b/unit-2').and(page.locator('[data-state="offline"]')).waitFor({ timeout: 15000 });
  console.log(`unit-2 shown offline ${Date.now() - killedAt} ms after SIGKILL`);
  if ((await row('clinic-a/unit-1').getAttribute('data-state')) !== 'online') {
    throw new Error('unit-1 should still be online');
  }

  // No patient data, not even the file name, reaches the page.
  const text = await page.locator('body').innerText();
  if (text.includes(basename(sample)) || text.includes(basename(sample, '.jpg'))) {
    throw new Error('the page shows the input file name');
  }
  const shot = join(artifacts, 'dashboard-e2e.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
  const errors = consoleLines.filter((l) => l.startsWith('error') || l.startsWith('pageerror'));
  if (errors.length) throw new Error(`browser console errors:\n${errors.join('\n')}`);
} catch (e) {
  error = e;
}
await finish('dashboard-e2e', { error, browser, page, artifacts, work });
