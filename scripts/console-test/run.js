// Baton's console in a real browser: Debian's Chromium, headless, driven by
// playwright-core (exact version in package.json). tests/system/console.rs
// starts the emulator and Baton, prepares a conversation and a dead letter,
// then runs this with BATON_CONSOLE_TEST (JSON) describing them. Each check
// prints one line; the first failure exits 1.
"use strict";

const { chromium } = require("playwright-core");
const path = require("path");

const cfg = JSON.parse(process.env.BATON_CONSOLE_TEST);
const steps = [];

function ok(name, detail) {
  steps.push({ name, ok: true, detail });
  console.log(JSON.stringify({ step: name, ok: true, detail }));
}

function check(cond, name, detail) {
  if (!cond) {
    const err = new Error(`${name}: ${JSON.stringify(detail)}`);
    err.step = name;
    throw err;
  }
  ok(name, detail);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(cfg.shots_dir, name + ".png"), fullPage: true });
}

async function signIn(context, token) {
  const page = await context.newPage();
  const first = await page.goto(cfg.baton + "/console");
  check(page.url().endsWith("/console/login"), "an unsigned visitor is sent to sign in", { url: page.url(), status: first.status() });
  // Keyboard only: the token field has focus (autofocus, and focused again
  // in case a mobile page ignored it); Enter submits.
  await page.waitForSelector("#token");
  await page.focus("#token");
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  await page.waitForURL(cfg.baton + "/console");
  check(!page.url().includes(token), "the token never appears in a URL", { url: page.url() });
  return page;
}

/** Every input, select and button has an accessible name. */
async function labelled(page) {
  return page.evaluate(() => {
    const missing = [];
    for (const el of document.querySelectorAll("input:not([type=hidden]), select, button, textarea")) {
      const byFor = el.id && document.querySelector(`label[for="${el.id}"]`);
      const name = (el.getAttribute("aria-label") || (byFor && byFor.textContent) || (el.tagName === "BUTTON" && el.textContent) || "").trim();
      if (!name) missing.push(el.outerHTML.slice(0, 120));
    }
    return missing;
  });
}

async function fitsWidth(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
}

async function graphPost(edge, token, body) {
  const res = await fetch(`${cfg.baton}/v21.0/me/${edge}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const VIEWS = [
  ["overview", "/console"],
  ["threads", "/console/threads"],
  ["messageable", "/console/messageable?app=" + cfg.human],
  ["refusals", "/console/refusals"],
  ["delivery", "/console/delivery"],
  ["integrity", "/console/integrity"],
  ["metrics", "/console/metrics"],
];

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    // ---- The admin, at 1280 px. -----------------------------------------
    const wide = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await signIn(wide, cfg.admin);
    const cookies = await wide.cookies();
    const session = cookies.find((c) => c.name === "baton_console");
    check(session && session.httpOnly && session.sameSite === "Strict" && session.path === "/console",
      "the session cookie is HttpOnly, SameSite=Strict, scoped to /console", session);
    check((await page.textContent("h1")).includes("Pages and apps"), "the admin lands on pages and apps", {});
    check((await page.content()).includes(cfg.other_page), "the admin sees every page", { page: cfg.other_page });
    await shot(page, "overview");

    // Meta dropped the bot's subscription: the overview says so and offers
    // the admin to subscribe it again.
    const botRow = page.locator("tr", { has: page.locator("th", { hasText: `${cfg.bot} ·` }) }).first();
    check((await botRow.textContent()).includes("dropped"), "the overview shows the bot's subscription dropped", {});
    const again = page.getByRole("button", { name: `Subscribe ${cfg.bot} to page ${cfg.page} again` });
    await again.focus();
    await page.keyboard.press("Enter");
    // The form posts and comes back to the same page: wait for the new one.
    await again.waitFor({ state: "detached" });
    check((await botRow.textContent()).includes("subscribed"), "after re-subscription the bot is subscribed", { row: await botRow.textContent() });

    // A thread changes owner live, after a pass through the Graph-compatible API.
    await page.goto(cfg.baton + "/console/threads");
    const row = `tr[data-thread="${cfg.page}/${cfg.psid}"]`;
    const owner = () => page.textContent(`${row} [data-field="owner"]`);
    check((await owner()).trim() === cfg.bot, "the thread list shows the bot owning the thread", { owner: await owner() });
    await page.waitForFunction(() => /Live:/.test(document.querySelector("[data-live-status]").textContent));
    await shot(page, "threads");
    const pass = await graphPost("pass_thread_control", cfg.bot_token, {
      recipient: { id: cfg.psid }, target_app_id: cfg.human, metadata: "a human, please",
    });
    check(pass.status === 200, "the bot passes the thread through the Graph-compatible API", pass);
    await page.waitForFunction(
      ([sel, human]) => document.querySelector(sel).textContent.trim() === human,
      [`${row} [data-field="owner"]`, cfg.human],
      { timeout: 15000 },
    );
    ok("the owner changes in the open page without a reload", { owner: await owner() });

    // The timeline and the time slider.
    await page.click(`${row} a`);
    await page.waitForSelector("ol.timeline li");
    const entries = await page.$$eval("ol.timeline li", (lis) => lis.map((li) => li.textContent));
    check(entries.some((t) => t.includes("ThreadControlPassed")), "the timeline explains the pass", { entries: entries.length });
    check((await page.textContent('#state [data-field="owner"]')).trim() === cfg.human, "the state now: the human owns it", {});
    const slider = page.locator("#at");
    await slider.focus();
    await page.keyboard.press("Home");
    await page.waitForFunction((bot) => document.querySelector('#state [data-field="owner"]').textContent.trim() === bot, cfg.bot);
    ok("the slider at the first event shows the bot owning it", { at: await slider.getAttribute("aria-valuetext") });
    check((await page.$$("ol.timeline li.later")).length > 0, "later events are dimmed", {});
    await shot(page, "thread");
    await page.keyboard.press("End");
    await page.waitForFunction((human) => document.querySelector('#state [data-field="owner"]').textContent.trim() === human, cfg.human);
    ok("the slider at the last event shows the human again", {});

    // Who can I message now?
    await page.goto(cfg.baton + "/console/messageable?app=" + cfg.human);
    const rows = await page.$$eval("table[data-messageable] tbody tr", (trs) => trs.map((tr) => tr.getAttribute("data-thread")));
    check(rows.includes(`${cfg.page}/${cfg.psid}`), "the human may message the thread it now owns", { rows });
    await shot(page, "messageable");
    await page.goto(cfg.baton + "/console/messageable?app=" + cfg.bot);
    const botRows = await page.$$eval("table[data-messageable] tbody tr", (trs) => trs.map((tr) => tr.getAttribute("data-thread")));
    check(!botRows.includes(`${cfg.page}/${cfg.psid}`), "the bot may not: the human holds the thread", { botRows });

    // Redrive a dead letter.
    await page.goto(cfg.baton + "/console/delivery");
    const button = page.getByRole("button", { name: `Redrive item ${cfg.dead_position} to ${cfg.bot}` });
    await shot(page, "delivery");
    await button.focus();
    await page.keyboard.press("Enter");
    await page.waitForURL(cfg.baton + "/console/delivery");
    await page.waitForSelector("text=requested");
    ok("the admin redrives the dead letter", { position: cfg.dead_position });

    // A forged form (no CSRF token) changes nothing.
    const forged = await page.evaluate(async (base) => {
      const r = await fetch(base + "/console/integrity/verify", { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "csrf=forged" });
      return r.status;
    }, cfg.baton);
    check(forged === 403, "a form without the session's CSRF token is refused", { status: forged });

    // Integrity, refusals, metrics.
    await page.goto(cfg.baton + "/console/integrity");
    await page.getByRole("button", { name: "Verify the whole chain now" }).click();
    await page.waitForSelector("[data-verify-result]");
    check((await page.textContent("[data-verify-result]")).includes("The chain verifies"), "the chain verifies from the console", {});
    await shot(page, "integrity");
    for (const [name, url] of VIEWS) {
      await page.goto(cfg.baton + url);
      const missing = await labelled(page);
      check(missing.length === 0, `every control of ${name} has a label`, { missing });
      if (name === "refusals" || name === "metrics") await shot(page, name);
    }

    // ---- 390 px wide. ------------------------------------------------------
    const narrow = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
    const phone = await signIn(narrow, cfg.admin);
    for (const [name, url] of VIEWS.concat([["thread", `/console/threads/${cfg.page}/${cfg.psid}`]])) {
      await phone.goto(cfg.baton + url);
      check(await fitsWidth(phone), `${name} fits 390 px without sideways scrolling`, {});
    }
    await phone.goto(cfg.baton + `/console/threads/${cfg.page}/${cfg.psid}`);
    await shot(phone, "thread-390");
    await phone.goto(cfg.baton + "/console/threads");
    await shot(phone, "threads-390");
    for (const [name, url] of VIEWS) {
      await page.goto(cfg.baton + url);
      check(await fitsWidth(page), `${name} fits 1280 px`, {});
    }

    // ---- An app token sees only its own pages. ----------------------------
    const appContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const app = await signIn(appContext, cfg.bot_token);
    check(!(await app.content()).includes(cfg.other_page), "the bot's overview lists only its pages", {});
    const other = await app.goto(`${cfg.baton}/console/threads/${cfg.other_page}/${cfg.psid}`);
    check(other.status() === 404, "the bot cannot open a thread of another page", { status: other.status() });
    await app.goto(`${cfg.baton}/console/threads?page=${cfg.other_page}`);
    const leaked = await app.$$eval("table[data-live] tbody tr", (trs) => trs.length);
    check(leaked === 0, "filtering on another page shows the bot nothing", { rows: leaked });
    await app.goto(cfg.baton + "/console/delivery");
    const buttons = await app.getByRole("button", { name: /Redrive/ }).count();
    check(buttons === 0, "the bot is offered no redrive", { buttons });
  } finally {
    await browser.close();
  }
}

main().then(
  () => {
    console.log(JSON.stringify({ done: true, steps: steps.length }));
  },
  (err) => {
    console.log(JSON.stringify({ step: err.step || "error", ok: false, error: String(err && err.stack || err) }));
    process.exit(1);
  },
);
