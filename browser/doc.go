// Package browser tests the live dashboard in a real headless Chromium,
// driven with chromedp. It is a module of its own so that the main module
// does not depend on chromedp. Without Chromium the test skips, saying so;
// `.ci/run` installs Debian's chromium so that it runs in CI.
package browser
