// Drive a Jupyter front-end in Debian's chromium: open a notebook with a PruningPanel, run it (Voila runs it
// itself), move the panel's sparsity slider with the keyboard, and report what the page shows (and, in
// JupyterLab, what the kernel computes). NBOPT_FRONTEND: lab (default) | notebook (Notebook 7) | voila.
// Usage: node drive.mjs  (config from env: NBOPT_LAB_URL, NBOPT_TOKEN, NBOPT_NOTEBOOK, NBOPT_SCREENSHOT,
// NBOPT_PRESSES, NBOPT_KEY, NBOPT_FRONTEND). Prints one line of JSON on stdout; exits non-zero on failure.
import { kernelIdle, openAndRun as open, runPage } from './lab.mjs';

const base = process.env.NBOPT_LAB_URL;
const token = process.env.NBOPT_TOKEN;
const notebook = process.env.NBOPT_NOTEBOOK;
const screenshot = process.env.NBOPT_SCREENSHOT;
const presses = Number(process.env.NBOPT_PRESSES || '10');
const key = process.env.NBOPT_KEY || 'ArrowRight';
const frontend = process.env.NBOPT_FRONTEND || 'lab';
const log = (...a) => console.error(new Date().toISOString(), frontend, ...a);

const result = { presses, key, frontend };

// JupyterLab 4 or Notebook 7 (both expose window.jupyterapp): open the notebook, run all cells, wait until done.
const openAndRun = (page) => open(page, { base, token, notebook, frontend, log, result });

await runPage(result, async (page) => {
  if (frontend === 'voila') {  // Voila executes the notebook when the page is requested and renders its outputs
    await page.goto(`${base}/?token=${token}`);
  } else {
    await openAndRun(page);
  }
  result.errors = await page.$$eval('.jp-OutputArea-output',
    (els) => els.map((e) => e.textContent).filter((t) => t.includes('Traceback') || t.includes('Error')));

  const panel = page.locator('.nbopt-pruning-panel').first();
  await panel.waitFor();
  await panel.scrollIntoViewIfNeeded();
  const handle = panel.locator('.noUi-handle').first();
  const readout = panel.locator('.widget-readout').first();
  const accuracy = panel.locator('.nbopt-accuracy');
  const tableRows = async () => panel.locator('.nbopt-table table tbody tr').evaluateAll((rows) => rows.map(
    (r) => [r.querySelector('th').textContent.trim(), ...[...r.querySelectorAll('td')].map((td) => td.textContent.trim())]));
  const headers = await panel.locator('.nbopt-table table thead tr').first()
    .evaluate((r) => [...r.querySelectorAll('th')].map((th) => th.textContent.trim()));

  const plotSrc = async () => (await panel.locator('img.nbopt-plot, .nbopt-plot img').first().getAttribute('src')) || '';
  result.before = { valuenow: await handle.getAttribute('aria-valuenow'), readout: (await readout.textContent()).trim(),
                    accuracy: (await accuracy.textContent()).trim(), rows: await tableRows(), plot: await plotSrc() };
  log('before', result.before.valuenow, result.before.accuracy);

  if (frontend === 'notebook') {  // Notebook 7 runs its command-mode shortcuts before widgets see a key: record
    await handle.focus();            // whether ArrowRight still reaches the slider (it did not in Notebook 7.6)
    await page.keyboard.press('ArrowRight');
    await page.waitForTimeout(500);
    result.arrow_moved = (await handle.getAttribute('aria-valuenow')) !== result.before.valuenow;
  }
  // Keyboard: focus the slider handle and press the key (each press is one event to the kernel).
  await handle.focus();
  for (let i = 0; i < presses; i++) await page.keyboard.press(key);
  const target = await handle.getAttribute('aria-valuenow');
  log('pressed', presses, 'x', key, '; handle at', target);
  // The panel debounces slider events: the kernel can be idle between a first render and the final one. The
  // readouts name the amount they were computed for (data-amount): wait until it is the slider's own value,
  // then until the readout has stayed the same for two seconds with the kernel idle (at most a minute).
  await page.waitForFunction(() => {
    const tag = document.querySelector('.nbopt-pruning-panel .nbopt-accuracy .nbopt-setting');
    const shown = document.querySelector('.nbopt-pruning-panel .widget-readout');
    if (!tag || !shown) return false;
    const slider = parseFloat(shown.textContent) / (shown.textContent.includes('%') ? 100 : 1);
    return Math.abs(parseFloat(tag.dataset.amount) - slider) < 1e-6;
  }, null, { timeout: 120000, polling: 200 }).catch(async (e) => {
    log('readouts never named the slider value:', await accuracy.innerHTML(), '| slider', await readout.textContent());
    throw e;
  });
  let settled = (await accuracy.textContent()).trim();
  for (let i = 0; i < 30; i++) {
    if (frontend !== 'voila') await kernelIdle(page);
    await page.waitForTimeout(2000);
    const now = (await accuracy.textContent()).trim();
    if (now === settled) break;
    settled = now;
  }
  result.after = { valuenow: await handle.getAttribute('aria-valuenow'), readout: (await readout.textContent()).trim(),
                   accuracy: (await accuracy.textContent()).trim(), rows: await tableRows(),
                   totals: (await panel.locator('.nbopt-totals').textContent()).trim(), plot: await plotSrc() };
  result.headers = headers;
  log('after', result.after.valuenow, result.after.accuracy);

  // JupyterLab: ask the kernel, independently of the panel, what this setting gives (the other front-ends'
  // numbers are checked against the same computation in the test process).
  if (frontend === 'lab') result.kernel = await kernelCheck(page);
  await panel.screenshot({ path: screenshot });
  result.screenshot = screenshot;
}, { viewport: { width: 1400, height: 1000 }, log });

async function kernelCheck(page) {
  const code = `
import json as _json
_check = nbopt.Pruner(model, x, progress=False).set(amount=panel.amount.value)
_rep = _check.report
print("NBOPT_JSON" + _json.dumps({
    "slider": panel.amount.value,
    "layers": list(_rep.index),
    "sparsity": [float(v) for v in _rep["sparsity"]],
    "params_after": [int(v) for v in _rep["params_after"]],
    "effective_macs": [float(v) for v in _rep["effective_macs"]],
    "total_sparsity": _check.sparsity,
    "accuracy": demo.evaluate(_check.model),
    "panel_accuracy": panel.accuracy,
    "updates": panel._debounced.calls,
}))`;
  return page.evaluate(async (source) => {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    const future = kernel.requestExecute({ code: source, store_history: false });
    let out = '';
    future.onIOPub = (msg) => {
      if (msg.header.msg_type === 'stream') out += msg.content.text;
      if (msg.header.msg_type === 'error') out += 'ERROR ' + msg.content.ename + ': ' + msg.content.evalue;
    };
    await future.done;
    return out;
  }, code);
}
