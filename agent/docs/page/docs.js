// The daemon's API explorer: Swagger UI over this daemon's own spec, sending "try it out"
// requests to this same origin. A token typed into "Authorize" stays in this tab's memory:
// persistAuthorization is off, so nothing is written to localStorage or cookies.
(async function () {
  "use strict";
  const status = document.getElementById("docs-status");
  // "/docs" or "/browsers/{id}/docs": the API lives at what comes before.
  const base = window.location.pathname.replace(/\/docs\/?$/, "");
  let spec;
  try {
    const response = await fetch(base + "/spec.json", { credentials: "same-origin" });
    if (!response.ok) {
      throw new Error(`GET ${base}/spec.json answered ${response.status}`);
    }
    spec = await response.json();
  } catch (err) {
    status.textContent = `Could not load the API description: ${err.message}`;
    return;
  }
  // The spec names the default address; requests go to the daemon that served this page.
  spec.servers = [{ url: window.location.origin + base, description: "this daemon" }];
  window.ui = SwaggerUIBundle({
    spec: spec,
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: false,
    persistAuthorization: false,
    queryConfigEnabled: false,
    validatorUrl: null,
    displayOperationId: true,
    tryItOutEnabled: false,
  });
  status.textContent = "";
})();
