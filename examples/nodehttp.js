'use strict';
// nodehttp: a node http server and its own keep-alive client in one process, to
// checkpoint.
//
//     node nodehttp.js ROUNDS
//
// The server listens on 127.0.0.1 (port chosen by the kernel) and keeps a
// counter and a running hash. 100 ms after each response the client makes the
// next GET through an http.Agent with keepAlive and maxSockets 1, so one
// established connection carries every request; each response is printed with
// whether the request went on a reused socket. After ROUNDS requests the agent
// and the server are closed and a summary printed: the server counts the
// connections it accepted (1 if the connection survived throughout). Prints
// "ready" first. No ports, pids or times: every run prints the same.
//
// The server's keep-alive timeout is 60 s (node's default is 5 s), so that a
// pause of some seconds between two requests (a slow save) does not close the
// connection.

const crypto = require('crypto');
const http = require('http');

const rounds = Number(process.argv[2] || 30);

function say(line) {
  // Synchronous for files and pipes on Linux: each line is out when this returns.
  process.stdout.write(line + '\n');
}

function sha(text) {
  return crypto.createHash('sha256').update(text).digest('hex');
}

let counter = 0;
let hash = sha('nodehttp');
let connections = 0;

const server = http.createServer((req, res) => {
  counter += 1;
  hash = sha(hash + req.method + req.url);
  const body = `count=${counter} hash=${hash.slice(0, 16)} url=${req.url}`;
  res.writeHead(200, {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
});
server.keepAliveTimeout = 60000;
server.on('connection', () => {
  connections += 1;
});

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let reused = 0;

function fail(what, err) {
  say(`FAILED: ${what}: ${err.code || err.message}`);
  process.exit(1);
}

function request(port, n) {
  const req = http.get({ host: '127.0.0.1', port, path: `/r/${n}`, agent }, (res) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (chunk) => {
      body += chunk;
    });
    res.on('end', () => {
      if (req.reusedSocket) reused += 1;
      say(`${n} ${res.statusCode} ${body} reused=${req.reusedSocket}`);
      if (n < rounds) setTimeout(() => request(port, n + 1), 100);
      else finish();
    });
  });
  req.on('error', (err) => fail(`request ${n}`, err));
}

function finish() {
  agent.destroy();
  server.close(() => {
    say(`done requests=${rounds} counter=${counter} reused=${reused} ` +
        `connections=${connections} hash=${hash.slice(0, 32)}`);
  });
}

server.on('error', (err) => fail('server', err));
server.listen(0, '127.0.0.1', () => {
  say('ready');
  setTimeout(() => request(server.address().port, 1), 100);
});
