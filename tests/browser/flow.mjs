// Walks the authorization-code flow in headless Chromium as a person would, and audits each
// page with axe-core. Prints one JSON object on stdout; tests/api/browser.rs checks it.
// Usage: node flow.mjs BASE_URL AUTHORIZE_URL USERNAME PASSWORD REDIRECT_URI
import { chromium } from 'playwright-core';
import { AxeBuilder } from '@axe-core/playwright';

const [base, authorizeUrl, username, password, redirectUri] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = { audits: {}, redirect: null };
try {
  const context = await browser.newContext();
  let page = await context.newPage();
  page.setDefaultTimeout(20000);
  const audit = async (name) => {
    const report = await new AxeBuilder({ page }).analyze();
    result.audits[name] = report.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')),
    }));
  };

  await page.goto(authorizeUrl);
  await audit('login');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').waitFor();
  await audit('login_error');

  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Allow' }).waitFor();
  await audit('consent');
  // The client's redirect URI is not served here; the request the browser makes for it,
  // following gatehouse's redirect, is what a client would receive.
  const [arrival] = await Promise.all([
    page.waitForRequest((request) => request.url().startsWith(redirectUri)),
    page.getByRole('button', { name: 'Allow' }).click(),
  ]);
  result.redirect = arrival.url();

  // That navigation ends in the browser's own error page; carry on in a fresh tab with the
  // same cookies.
  page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(`${base}/authorize?client_id=nobody`);
  await audit('error');
  await page.goto(`${base}/logout`);
  await audit('logout');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'You are signed out' }).waitFor();
  await audit('logged_out');
} catch (error) {
  result.error = String(error && error.stack || error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
