// Drives Debian's Chromium (headless, through playwright-core, which downloads no browser) for
// tests/browser.rs: opens each page URL given, waits for `window.done`, and prints one JSON
// object on stdout: {"pages": [{url, results, preflights, requests, console}]}.
//
// No request is intercepted (`page.route` would make Playwright answer CORS preflights itself):
// a raw CDP session only watches the network, so the preflights Chromium sends, and what the
// gateway answered them, are reported as they happened.
//
// Usage: node run.js CHROMIUM URL...
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const [executablePath, ...urls] = process.argv.slice(2);

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'frontdesk-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const pages = [];
  try {
    for (const url of urls) {
      const page = await context.newPage();
      const cdp = await context.newCDPSession(page);
      const requests = new Map();
      cdp.on('Network.requestWillBeSent', (e) => {
        requests.set(e.requestId, {
          type: e.type,
          method: e.request.method,
          url: e.request.url,
          headers: e.request.headers,
          response: null,
          failed: null,
        });
      });
      cdp.on('Network.responseReceived', (e) => {
        const r = requests.get(e.requestId);
        if (r) r.response = { status: e.response.status, headers: e.response.headers };
      });
      cdp.on('Network.loadingFailed', (e) => {
        const r = requests.get(e.requestId);
        if (r) {
          r.failed = { error: e.errorText, cors: e.corsErrorStatus ? e.corsErrorStatus.corsError : null };
        }
      });
      await cdp.send('Network.enable');
      const consoleLines = [];
      page.on('console', (m) => consoleLines.push(m.type() + ': ' + m.text()));
      page.on('pageerror', (e) => consoleLines.push('pageerror: ' + e.message));
      await page.goto(url);
      await page.waitForFunction(() => window.done === true, null, { timeout: 60000 });
      const results = await page.evaluate(() => window.results);
      const all = [...requests.values()];
      pages.push({
        url,
        results,
        preflights: all.filter((r) => r.type === 'Preflight' || r.method === 'OPTIONS'),
        requests: all.filter((r) => r.type !== 'Preflight' && r.method !== 'OPTIONS'),
        console: consoleLines,
      });
      await page.close();
    }
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify({ pages }) + '\n');
}

main().catch((e) => {
  process.stderr.write('run.js: ' + (e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
