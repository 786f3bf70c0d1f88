// Look at one tutorial as a person would: open it in JupyterLab 4 in Debian's chromium, "Run All", take a
// screenshot of every cell's outputs, measure what a reader notices (outputs wider than the notebook, squashed
// sliders, clipped tables, stderr blocks), then move each panel's first slider with the arrow keys and drag it
// with the mouse, checking that the panel redraws after each.
// Config from env: NBOPT_LAB_URL, NBOPT_TOKEN, NBOPT_NOTEBOOK, NBOPT_ARTIFACTS (screenshot folder),
// NBOPT_RUN_TIMEOUT_MS. Prints one line of JSON on stdout; exits non-zero on failure.
import { kernelIdle, openAndRun, runPage } from './lab.mjs';

const base = process.env.NBOPT_LAB_URL;
const token = process.env.NBOPT_TOKEN;
const notebook = process.env.NBOPT_NOTEBOOK;
const artifacts = process.env.NBOPT_ARTIFACTS;
const log = (...a) => console.error(new Date().toISOString(), notebook, ...a);
const result = { notebook, screenshots: [], panels: [] };
const VIEWPORT = { width: 1400, height: 1000 };
// A screenshot of `locator`; for one taller than the window the window is made taller for the shot (same width,
// so the same layout), since the notebook scrolls inside its own panel and would cut it off.
const shot = async (locator, name) => {
  const path = `${artifacts}/${name}.png`;
  const page = locator.page();
  const box = await locator.boundingBox();
  const tall = box && box.height > VIEWPORT.height - 150;
  if (tall) await page.setViewportSize({ width: VIEWPORT.width, height: Math.min(8000, Math.ceil(box.height) + 300) });
  await locator.scrollIntoViewIfNeeded();
  await locator.screenshot({ path });
  if (tall) await page.setViewportSize(VIEWPORT);
  result.screenshots.push(path);
};

// Everything measured in the page, per code cell (index = position among all cells of the notebook).
function measure() {
  const nb = window.jupyterapp.shell.currentWidget.content;
  const panelRight = nb.node.getBoundingClientRect().right;
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const out = { panel_width: nb.node.clientWidth, outputs: [], sliders: [], tables: [], stderr: [] };
  nb.widgets.forEach((cell, index) => {
    if (cell.model.type !== 'code') return;
    for (const area of cell.node.querySelectorAll('.jp-OutputArea-output')) {
      if (!visible(area)) continue;
      const r = area.getBoundingClientRect();
      const child = area.matches('[data-mime-type]') ? area : area.querySelector('[data-mime-type]');
      out.outputs.push({ cell: index, mime: child ? child.dataset.mimeType : '', nested: !!area.parentElement.closest('.jp-OutputArea-output'),
                         scroll_width: area.scrollWidth, client_width: area.clientWidth,
                         overflow_px: Math.round(Math.max(area.scrollWidth - area.clientWidth, r.right - panelRight)) });
    }
    for (const slider of cell.node.querySelectorAll('.widget-slider')) {
      const track = slider.querySelector('.noUi-target, .slider-container');
      const label = slider.querySelector('.widget-label');
      out.sliders.push({ cell: index, label: label ? label.textContent.trim() : '', visible: visible(slider),
                         width: Math.round(slider.getBoundingClientRect().width),
                         track_width: track ? Math.round(track.getBoundingClientRect().width) : 0 });
    }
    for (const table of cell.node.querySelectorAll('.jp-OutputArea-output table')) {
      if (!visible(table)) continue;
      const area = table.closest('.jp-OutputArea-output');
      const width = Math.max(table.scrollWidth, table.getBoundingClientRect().width);
      let box = table.parentElement;  // the nearest enclosing box narrower than the table
      while (box && box !== area && box.clientWidth + 1 >= width) box = box.parentElement;
      let status = 'fits';
      if (box && box.clientWidth + 1 < width) {
        const scrolls = ['auto', 'scroll'].includes(getComputedStyle(box).overflowX);
        status = !scrolls ? 'clipped' : box === area ? 'output area scrolls' : 'own scroll box';
      }
      out.tables.push({ cell: index, columns: table.querySelectorAll('thead tr:last-child th').length,
                        width: Math.round(width), box_width: box ? box.clientWidth : 0, status });
    }
    for (const err of cell.node.querySelectorAll('.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]')) {
      out.stderr.push({ cell: index, text: err.textContent.slice(0, 400) });
    }
  });
  return out;
}

// What a panel shows apart from its sliders: its text and its images.
const panelView = (el) => {
  const copy = el.cloneNode(true);
  copy.querySelectorAll('.widget-slider').forEach((n) => n.remove());
  return copy.textContent + [...el.querySelectorAll('img')].map((i) => i.src.length + ':' + i.src.slice(-80)).join('|');
};

async function waitForRedraw(page, panel, before) {
  await page.waitForFunction(([sel, was, view]) => {
    const el = document.querySelector(sel);
    return el && (new Function('return ' + view))()(el) !== was;
  }, [`[data-nbopt-panel="${await panel.getAttribute('data-nbopt-panel')}"]`, before, panelView.toString()],
  { timeout: 120000, polling: 250 });
  let settled = await panel.evaluate(panelView);  // debounced: wait until it stays the same with the kernel idle
  for (let i = 0; i < 30; i++) {
    await kernelIdle(page, 180000);
    await page.waitForTimeout(1500);
    const now = await panel.evaluate(panelView);
    if (now === settled) break;
    settled = now;
  }
  return settled;
}

async function drivePanel(page, panel, n) {
  // the first slider a person can move (a disabled one, e.g. the PruningPanel's amount under an N:M pattern, is not)
  const slider = panel.locator('.widget-slider:has(.noUi-target:not([disabled]))').first();
  const handle = slider.locator('.noUi-handle').first();
  await handle.scrollIntoViewIfNeeded();
  const label = await slider.locator('.widget-label').textContent().catch(() => '');
  const record = { index: n, slider: (label || '').trim() };
  await shot(panel, `panel-${n}-0-before`);
  // Keyboard: focus the handle and press an arrow key twice (right, or left when it sits at the right end).
  const view = await panel.evaluate(panelView);
  record.start = await handle.getAttribute('aria-valuenow');
  const atMax = record.start === await handle.getAttribute('aria-valuemax');
  record.key = atMax ? 'ArrowLeft' : 'ArrowRight';
  await handle.focus();
  await page.keyboard.press(record.key);
  await page.keyboard.press(record.key);
  record.after_keys = await handle.getAttribute('aria-valuenow');
  const afterKeys = await waitForRedraw(page, panel, view).catch((e) => { record.keys_error = String(e).slice(0, 300); return view; });
  record.keys_redrawn = afterKeys !== view;
  await shot(panel, `panel-${n}-1-after-keys`);
  // Mouse: press on the handle and drag it back along the track, past where it started.
  const h = await handle.boundingBox();
  const track = await slider.locator('.noUi-target').first().boundingBox();
  const x0 = h.x + h.width / 2, y0 = h.y + h.height / 2;
  const dx = atMax ? Math.min(80, track.x + track.width - x0 - 1) : -Math.min(80, x0 - track.x + 1);
  await page.mouse.move(x0, y0);
  await page.mouse.down();
  await page.mouse.move(x0 + dx, y0, { steps: 10 });
  await page.mouse.up();
  record.after_drag = await handle.getAttribute('aria-valuenow');
  const afterDrag = await waitForRedraw(page, panel, afterKeys).catch((e) => { record.drag_error = String(e).slice(0, 300); return afterKeys; });
  record.drag_redrawn = afterDrag !== afterKeys;
  await shot(panel, `panel-${n}-2-after-drag`);
  return record;
}

await runPage(result, async (page) => {
  await openAndRun(page, { base, token, notebook, log, result });
  await page.waitForTimeout(2000);  // let widget views and images finish rendering
  result.errors = await page.$$eval('.jp-OutputArea-output',
    (els) => els.map((e) => e.textContent).filter((t) => t.includes('Traceback')));
  result.after_run = await page.evaluate(measure);

  // One screenshot per code cell's outputs.
  const cells = page.locator('.jp-Notebook .jp-Cell');
  for (let i = 0; i < await cells.count(); i++) {
    const outputs = cells.nth(i).locator('.jp-Cell-outputWrapper');
    if (await outputs.count() && (await outputs.first().locator('.jp-OutputArea-output').count())) {
      await shot(outputs.first(), `cell-${String(i).padStart(2, '0')}`);
    }
  }

  // Panels: widget outputs with a slider; each is driven by mouse, then keys.
  const count = await page.evaluate(() => {
    let n = 0;
    for (const area of document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')) {
      const view = area.querySelector(':scope > .jupyter-widgets, :scope > .widget-container, :scope > div > .jupyter-widgets');
      const root = view || area;
      if (!area.parentElement.closest('.jp-OutputArea-output') && root.querySelector('.noUi-handle')) {
        root.setAttribute('data-nbopt-panel', String(n++));
      }
    }
    return n;
  });
  for (let n = 0; n < count; n++) {
    result.panels.push(await drivePanel(page, page.locator(`[data-nbopt-panel="${n}"]`), n));
    log('panel', n, JSON.stringify(result.panels[n]));
  }
  // Open every collapsed accordion section (a slider hidden in one is still a slider the user will see).
  const headers = page.locator('.jp-Notebook .jupyter-widget-Collapse:not(.jupyter-widget-Collapse-open) > .jupyter-widget-Collapse-header');
  for (let i = await headers.count(); i > 0; i--) await headers.first().click().catch(() => {});
  await page.waitForTimeout(1500);
  await kernelIdle(page);
  result.final = await page.evaluate(measure);
  for (let n = 0; n < count; n++) await shot(page.locator(`[data-nbopt-panel="${n}"]`), `panel-${n}-3-accordions-open`);
}, { viewport: VIEWPORT, log });
