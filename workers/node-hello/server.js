// A Node app run by tqserver (type: http): stdlib only. tqserver gives it
// WORKER_PORT (listen here, on 127.0.0.1), WORKER_NAME, WORKER_ROUTE (the
// URL prefix it serves; paths arrive unchanged) and WORKER_MODE.
"use strict";
const http = require("http");

const port = Number(process.env.WORKER_PORT);
const route = process.env.WORKER_ROUTE || "/";
const prefix = route === "/" ? "" : route;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  if (url.pathname === "/health") {
    res.end("ok\n");
    return;
  }
  if (url.pathname === prefix + "/hello" || url.pathname === prefix || url.pathname === prefix + "/") {
    res.setHeader("content-type", "text/plain");
    res.end(`hello from ${process.env.WORKER_NAME} at ${route} (${process.env.WORKER_MODE})\n`);
    return;
  }
  if (url.pathname === prefix + "/echo") {
    // Echoes the request: method, path, headers and body.
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({
        method: req.method,
        url: req.url,
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      }) + "\n");
    });
    return;
  }
  res.statusCode = 404;
  res.end("not found\n");
});

server.listen(port, "127.0.0.1", () => {
  console.log(`${process.env.WORKER_NAME} listening on 127.0.0.1:${port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
