// Connects Puppeteer to a DevTools endpoint, opens a page, sets its title and reads it
// back, then disconnects and leaves the page open (so the caller can find it from the
// browser's side). Prints one JSON line: {ok: true, title, userAgent, version} or
// {ok: false, error}; exits 0 or 1 accordingly.
//
//   node puppeteer_connect.mjs '<puppeteer.connect options as JSON>' '<title to set>'
import puppeteer from "puppeteer-core";

const options = JSON.parse(process.argv[2]);
const title = process.argv[3];

try {
  const browser = await puppeteer.connect({ ...options, defaultViewport: null });
  try {
    const page = await browser.newPage();
    await page.goto("data:text/html,<title>untitled</title><p>puppeteer</p>");
    await page.evaluate((text) => { document.title = text; }, title);
    console.log(JSON.stringify({
      ok: true,
      title: await page.title(),
      userAgent: await page.evaluate(() => navigator.userAgent),
      version: await browser.version(),
    }));
  } finally {
    await browser.disconnect();
  }
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error?.message ?? error) }));
  process.exitCode = 1;
}
