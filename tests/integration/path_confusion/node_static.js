// A typical naive static file server, as the path-confusion test's Node
// upstream: WHATWG `new URL()` parses the target (so a raw `\` is a `/`),
// the pathname is percent-decoded, joined to the docroot, and served only
// if the result is inside the docroot. Every step is what such servers do;
// the test proves the gateway keeps it from being fooled.
//
//   node node_static.js PORT DOCROOT
'use strict';
const http = require('http');
const path = require('path');
const fs = require('fs');

const [port, root] = process.argv.slice(2);

function answer(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/plain' });
  res.end(body);
}

http
  .createServer((req, res) => {
    let file;
    try {
      const pathname = new URL(req.url, 'http://x').pathname;
      file = path.join(root, decodeURIComponent(pathname));
    } catch (e) {
      answer(res, 400, 'bad request target\n');
      return;
    }
    if (file !== root && !file.startsWith(root + path.sep)) {
      answer(res, 403, 'outside the docroot\n');
      return;
    }
    // A NUL in the name makes fs throw at once rather than call back.
    try {
      fs.readFile(file, (err, data) => {
        if (err) answer(res, 404, 'not found\n');
        else answer(res, 200, data);
      });
    } catch (e) {
      answer(res, 400, 'bad file name\n');
    }
  })
  .listen(Number(port), '127.0.0.1', () => console.log(`listening on ${port}`));
