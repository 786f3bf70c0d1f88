// Shared by drive.mjs and tutorial.mjs: start Debian's chromium through playwright-core, open a notebook in
// JupyterLab 4 (or Notebook 7), run every cell and wait until all have run and the kernel is idle.
import { chromium } from 'playwright-core';

export const launch = () => chromium.launch({
  executablePath: process.env.NBOPT_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
});

// Run `main(page)` on a new page of a fresh browser, then print `result` as one line of JSON on stdout (with
// `failure` when `main` threw, and a non-zero exit code) and close the browser: what both scripts end with.
export async function runPage(result, main, { viewport, log = () => {} }) {
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport });
    page.setDefaultTimeout(120000);
    page.on('pageerror', (e) => log('pageerror', e.message));
    await main(page);
  } catch (err) {
    result.failure = String(err && err.stack || err);
    process.exitCode = 1;
  } finally {
    console.log(JSON.stringify(result));
    await browser.close();
  }
}

export const kernelIdle = (page, timeout = 120000) => page.waitForFunction(
  () => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle', null,
  { polling: 250, timeout });

// Open `notebook` (served at `base` with `token`), accept the kernel the app proposes, run all cells and wait
// until each code cell has an execution count and the kernel is idle (NBOPT_RUN_TIMEOUT_MS, default 4 min).
// `result` records what the page showed on the way (Notebook 7's tree listing).
export async function openAndRun(page, { base, token, notebook, frontend = 'lab', log = () => {}, result = {} }) {
  if (frontend === 'notebook') {  // Notebook 7: the file browser at /tree lists it; the notebook opens at /notebooks/
    await page.goto(`${base}/tree?token=${token}`);
    await page.locator('.jp-DirListing-item', { hasText: notebook }).first().waitFor();
    result.tree_listed = true;
    await page.goto(`${base}/notebooks/${notebook}?token=${token}`);
  } else {
    await page.goto(`${base}/lab/tree/${notebook}?token=${token}&reset`);
    await page.waitForSelector('#jupyterlab-splash', { state: 'detached' });
  }
  await page.waitForSelector('.jp-Notebook .jp-Cell');
  // The app may ask which kernel to start: accept its proposal (the notebook's python3).
  await page.waitForFunction(() => document.querySelector('.jp-Dialog') ||
    window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel, null, { polling: 250 });
  const accept = page.locator('.jp-Dialog .jp-mod-accept');
  if (await accept.count()) { log('kernel dialog: accepting', await page.locator('.jp-Dialog select').inputValue().catch(() => '?')); await accept.click(); }
  await kernelIdle(page);
  log('notebook open, kernel idle');

  const started = Date.now();
  await page.evaluate(() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); });
  const deadline = started + Number(process.env.NBOPT_RUN_TIMEOUT_MS || '240000');
  let lastReport = 0;
  for (;;) {
    const state = await page.evaluate(() => {
      const nb = window.jupyterapp.shell.currentWidget;
      const cells = nb && nb.content ? nb.content.widgets.filter((c) => c.model.type === 'code') : [];
      const done = cells.filter((c) => c.model.executionCount !== null && c.model.executionCount !== undefined);
      return { total: cells.length, done: done.length, status: nb?.sessionContext?.session?.kernel?.status };
    });
    if (state.total > 0 && state.done === state.total && state.status === 'idle') break;
    if (Date.now() - lastReport > 10000) { log('running', JSON.stringify(state)); lastReport = Date.now(); }
    if (Date.now() > deadline) throw new Error('notebook did not finish: ' + JSON.stringify(state));
    await page.waitForTimeout(500);
  }
  result.run_s = (Date.now() - started) / 1000;
  log('notebook executed in', result.run_s, 's');
}
