// A Bun app in TypeScript, run by tqserver (type: http), on Bun's own
// server (Bun.serve); no packages. tqserver gives it WORKER_PORT (listen
// here, on 127.0.0.1), WORKER_NAME, WORKER_ROUTE (the URL prefix it serves;
// paths arrive unchanged) and WORKER_MODE (production or development).
const port = Number(process.env.WORKER_PORT);
const name = process.env.WORKER_NAME ?? "bun-hello";
const route = process.env.WORKER_ROUTE ?? "/";
const mode = process.env.WORKER_MODE ?? "production";
const prefix = route === "/" ? "" : route;

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/health":
        return new Response("ok\n");
      case prefix:
      case `${prefix}/`:
      case `${prefix}/hello`:
        return new Response(`hello from ${name} at ${route} (${mode})\n`, {
          headers: { "content-type": "text/plain" },
        });
      case `${prefix}/echo`:
        // The request as it arrived: method, path, headers and body.
        return Response.json({
          method: request.method,
          url: url.pathname + url.search,
          headers: Object.fromEntries(request.headers),
          body: await request.text(),
        });
      default:
        return new Response("not found\n", { status: 404 });
    }
  },
});

console.log(`${name} listening on ${server.hostname}:${server.port}`);
process.on("SIGTERM", () => {
  server.stop();
  process.exit(0);
});
