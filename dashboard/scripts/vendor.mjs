// Copies the browser build of MQTT.js from node_modules into vendor/, so that the page runs
// from plain static files (fv-edge embeds them) with no npm at the unit or the workstation.
// Run after changing the mqtt version in package.json: `npm install && npm run vendor`.
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(root, 'node_modules/mqtt/package.json'), 'utf8'));
copyFileSync(join(root, 'node_modules/mqtt/dist/mqtt.esm.js'), join(root, 'vendor/mqtt.esm.js'));
copyFileSync(join(root, 'node_modules/mqtt/LICENSE.md'), join(root, 'vendor/mqtt.LICENSE.md'));
writeFileSync(join(root, 'vendor/VERSION'), `mqtt ${pkg.version} (dist/mqtt.esm.js, MIT)\n`);
console.log(`vendored mqtt ${pkg.version}`);
