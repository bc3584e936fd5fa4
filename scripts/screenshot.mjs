// Screenshots of single-page apps with headless Chromium (Playwright), as a person would see them.
//   node scripts/screenshot.mjs shots.json
// shots.json: [{"url": ..., "out": "x.png", "waitFor": "text on the page", "click": ["text", ...], "follow": "link text",
//               "closeAssistant": true, "waitForAfter": "text after the clicks", "scrollTo": "text",
//               "width": 1600, "height": 1000, "fullPage": false}, ...]
// A shot fails (exit status 1, and a .failed.png of what the page showed) when its text never appears.
// Needs `playwright-core` (npm install playwright-core) and a Chromium (CHROMIUM=/usr/bin/chromium by default).
import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const shots = JSON.parse(readFileSync(process.argv[2], "utf8"));
const args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "eeopt-chromium-")), {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args, headless: true,
  viewport: { width: 1600, height: 1000 },
});
let failed = 0;
for (const shot of shots) {
  const page = await context.newPage();
  await page.setViewportSize({ width: shot.width || 1600, height: shot.height || 1000 });
  try {
    await page.goto(shot.url, { waitUntil: "domcontentloaded", timeout: 60000 });
    if (shot.waitFor) await page.getByText(shot.waitFor, { exact: false }).first().waitFor({ timeout: 90000 });
    if (shot.closeAssistant) {  // MLflow 3.17 opens its assistant panel on a browser's first visit
      const close = page.getByRole("button", { name: /close/i }).last();
      if (await close.isVisible().catch(() => false)) await close.click().catch(() => {});
    }
    for (const text of shot.click || []) {
      await page.getByText(text, { exact: false }).first().click({ timeout: 30000 });
      await page.waitForTimeout(1500);
    }
    if (shot.follow) {  // follow a link as its page renders it: its href, resolved against the page's address
      const link = page.locator("a", { hasText: shot.follow }).first();
      await link.waitFor({ timeout: 60000 });
      const href = await link.getAttribute("href");
      console.log(`following ${href}`);
      await page.goto(new URL(href, page.url()).toString(), { waitUntil: "domcontentloaded", timeout: 60000 });
    }
    if (shot.waitForAfter) await page.getByText(shot.waitForAfter, { exact: false }).first().waitFor({ timeout: 60000 });
    if (shot.scrollTo) {
      const target = page.getByText(shot.scrollTo, { exact: false }).first();
      await target.waitFor({ timeout: 60000 });
      await target.scrollIntoViewIfNeeded();
    }
    await page.waitForTimeout(shot.settle ?? 3000);
    await page.screenshot({ path: shot.out, fullPage: !!shot.fullPage });
    console.log(`wrote ${shot.out}  (${page.url()})`);
  } catch (err) {
    failed += 1;
    await page.screenshot({ path: shot.out.replace(/\.png$/, ".failed.png") }).catch(() => {});
    console.error(`FAILED ${shot.out}: ${err.message.split("\n")[0]}`);
  }
  await page.close();
}
await context.close();
process.exit(failed ? 1 : 0);
