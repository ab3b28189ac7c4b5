// Loads the admin listener's status page in Chromium through Playwright (CDP), in real time,
// against a proxy under load, and prints what it shows, twice, as JSON lines; then writes a
// screenshot. Run by crates/idem/tests/status_page.rs:
//   node status_page.mjs <chromium> <page URL> <screenshot path>
import { chromium } from "playwright-core";

const [browserPath, url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: browserPath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(url);
  const read = () =>
    page.evaluate(() => ({
      polls: Number(document.body.dataset.polls),
      health: document.getElementById("store-health").textContent,
      executed: document.getElementById("executed-total").textContent,
      duplicates: document.getElementById("duplicates-prevented").textContent,
      hitRate: document.getElementById("hit-rate").textContent,
      latency: document.getElementById("store-latency").textContent,
      charts: document.querySelectorAll("polyline").length,
    }));
  // Three polls (two seconds apart): rates and charts need two.
  await page.waitForFunction(() => Number(document.body.dataset.polls) >= 3, null, { timeout: 20000 });
  console.log(JSON.stringify(await read()));
  const polls = Number(await page.evaluate(() => document.body.dataset.polls));
  await page.waitForFunction((seen) => Number(document.body.dataset.polls) >= seen + 2, polls, { timeout: 20000 });
  console.log(JSON.stringify(await read()));
  await page.screenshot({ path: screenshot });
} finally {
  await browser.close();
}
