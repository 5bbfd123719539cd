// The reading screen at the unit, with real parts only and the network down: one fv-edge
// daemon whose broker does not answer, serving its reading screen on loopback, and Debian's
// Chromium driven by playwright-core. An image dropped into the watch folder must be on the
// screen (its overlay, finding, probability) within a second of its local result, and the
// screen must say that the result is waiting for the network.
//
//   FV_EDGE_BIN=target/debug/fv-edge node dashboard/tests/screen-e2e.mjs
//
// Environment as e2e.mjs (FV_EDGE_BIN, FV_MODELS, FV_SAMPLE, CHROMIUM, ARTIFACTS).
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { chromium } from 'playwright-core';
import { chromiumArgs, finish, freePort, setup, start, waitFor } from './harness.mjs';

const edgeBin = process.env.FV_EDGE_BIN;
if (!edgeBin) throw new Error('set FV_EDGE_BIN to the fv-edge binary (cargo build -p fv-edge)');
const { repo, models, chromiumPath, work, artifacts } = setup('screen-e2e');
const sample = process.env.FV_SAMPLE
  ?? join(repo, 'tests/data/fracatlas-sample/images/Fractured/IMG0002322.jpg');

let browser;
let page;
let error = null;
try {
  // Nothing listens on these: the broker and the PACS are down.
  const deadBroker = await freePort();
  const deadPacs = await freePort();
  const watch = join(work, 'watch');
  mkdirSync(watch, { recursive: true });
  const unit = start('unit-1', edgeBin, [
    'run', '-v', '--watch', watch, '--state', join(work, 'state'), '--models', models,
    '--site', 'clinic-a', '--device-id', 'unit-1', '--mqtt', `mqtt://127.0.0.1:${deadBroker}`,
    '--heartbeat', '1', '--settle-ms', '200',
  ], { env: { ...process.env, FV_SCREEN: '127.0.0.1:0', FV_PACS: `PACS@127.0.0.1:${deadPacs}` } });
  let pageUrl;
  await waitFor('fv-edge to print its reading screen', 60000, () => {
    const m = unit.log.match(/screen on (http:\/\/\S+)/);
    if (m) pageUrl = m[1];
    return Boolean(m);
  });

  browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const consoleLines = [];
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(pageUrl);
  await page.locator('#empty').waitFor({ state: 'visible', timeout: 10000 });

  const name = basename(sample);
  copyFileSync(sample, join(watch, `.${name}.part`));
  const { renameSync } = await import('node:fs');
  renameSync(join(watch, `.${name}.part`), join(watch, name));
  const resultFile = join(watch, 'done', `${name}.result.json`);
  await waitFor('the local result', 60000, () => existsSync(resultFile));
  const written = Date.now();
  await page.locator('#finding[data-seq]').waitFor({ timeout: 5000 });
  const lag = Date.now() - written;
  console.log(`on the screen ${lag} ms after the local result was seen`);
  if (lag > 1000) throw new Error(`the reading took ${lag} ms to reach the screen`);

  const finding = await page.locator('#finding').getAttribute('data-finding');
  const text = await page.locator('#finding').textContent();
  if (!['fracture', 'suspicious', 'no_fracture'].includes(finding) || !/P\(fracture\) 0\.\d\d/.test(text)) {
    throw new Error(`finding shown: ${finding}: ${text}`);
  }
  await waitFor('the overlay to load', 10000, () => page.locator('#image').evaluate(
    (img) => !img.hidden && img.complete && img.naturalWidth > 0,
  ));
  await waitFor('the waiting note', 10000, async () =>
    (await page.locator('#waiting').textContent()).includes('1 result waiting for the network'));
  const row = await page.locator('#readings tr').first().textContent();
  if (!row.includes(name)) throw new Error(`today's list: ${row}`);
  if (!(await page.locator('#notice').textContent()).includes('not a diagnosis')) {
    throw new Error('the page must say it is not a diagnosis');
  }
  console.log(`shown: ${text}; ${await page.locator('#waiting').textContent()}`);
  const shot = join(artifacts, 'screen-e2e.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot: ${shot}`);
  if (consoleLines.length) throw new Error(`browser errors:\n${consoleLines.join('\n')}`);
} catch (e) {
  error = e;
}
await finish('screen-e2e', { error, browser, page, artifacts, work });
