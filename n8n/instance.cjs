#!/usr/bin/env node
// One installation's part of n8n, made from its environment at import time so that no workflow reads $env
// (n8n runs with N8N_BLOCK_ENV_ACCESS_IN_NODE=true): the credentials, with the real secrets, which n8n stores
// encrypted; and the settings workflow "comfyq: settings (this installation)", the URLs and names the other
// workflows read through an Execute Workflow node. Used by n8n/n8nctl.py (`make n8n`) and by compose's
// n8n-import, so both make the same instance from the same variables. Plain Node, no packages: it also runs in
// the n8nio/n8n image.
//
//   node n8n/instance.cjs render OUT_DIR     writes OUT_DIR/credentials.json (mode 600) and
//                                            OUT_DIR/settings/settings.json from the templates beside this file
//   node n8n/instance.cjs hash-password      reads a password on stdin, prints its bcrypt hash (for
//                                            N8N_INSTANCE_OWNER_PASSWORD_HASH; n8n's bcryptjs)
//
// A template value {"$env": "NAME", "default": D, "type": "string"|"number"|"boolean", "prefix": P,
// "trimSlash": true} becomes the variable's value (D, itself possibly such a value, when unset or empty),
// converted, with P before it; with "equals": V it becomes whether the value is V;
// {"$json": X} becomes X rendered and written as a JSON text (a Set node's raw output).
'use strict';

const fs = require('fs');
const path = require('path');

const CREDENTIALS_TEMPLATE = path.join(__dirname, 'credentials.template.json');
const SETTINGS_TEMPLATE = path.join(__dirname, 'settings.template.json');

function fromEnv(marker, env) {
  const raw = env[marker.$env];
  let value = raw === undefined || raw === '' ? render(marker.default, env) : raw;
  if (value === undefined || value === null) value = '';
  if ('equals' in marker) return String(value) === marker.equals;
  if (marker.trimSlash && typeof value === 'string') value = value.replace(/\/+$/, '');
  if (marker.type === 'number') {
    const number = Number(value);
    if (!Number.isFinite(number)) throw new Error(`${marker.$env} must be a number, got ${JSON.stringify(value)}`);
    return number;
  }
  if (marker.type === 'boolean') return value === true || String(value).toLowerCase() === 'true';
  return value === '' ? '' : `${marker.prefix || ''}${value}`;
}

function render(value, env) {
  if (Array.isArray(value)) return value.map((item) => render(item, env));
  if (value && typeof value === 'object') {
    if (typeof value.$env === 'string') return fromEnv(value, env);
    if ('$json' in value) return JSON.stringify(render(value.$json, env), null, 2);
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, render(item, env)]));
  }
  return value;
}

function renderInstance(outDir, env) {
  fs.mkdirSync(path.join(outDir, 'settings'), { recursive: true, mode: 0o700 });
  const credentials = render(JSON.parse(fs.readFileSync(CREDENTIALS_TEMPLATE, 'utf8')), env);
  const credentialsFile = path.join(outDir, 'credentials.json');
  fs.writeFileSync(credentialsFile, `${JSON.stringify(credentials, null, 2)}\n`, { mode: 0o600 });
  fs.chmodSync(credentialsFile, 0o600);
  const settings = render(JSON.parse(fs.readFileSync(SETTINGS_TEMPLATE, 'utf8')), env);
  fs.writeFileSync(path.join(outDir, 'settings', 'settings.json'), `${JSON.stringify(settings, null, 2)}\n`);
}

function hashPassword(password) {
  // n8n's own bcryptjs: the project's n8n/node_modules, or the n8nio/n8n image's global install.
  const where = require.resolve('bcryptjs', {
    paths: [__dirname, path.join(__dirname, 'node_modules', 'n8n'), '/usr/local/lib/node_modules/n8n'],
  });
  return require(where).hashSync(password, 10);
}

function main(argv) {
  if (argv[0] === 'render' && argv.length === 2) {
    renderInstance(argv[1], process.env);
    return 0;
  }
  if (argv[0] === 'hash-password' && argv.length === 1) {
    const password = fs.readFileSync(0, 'utf8').replace(/\r?\n$/, '');
    if (!password) throw new Error('no password on stdin');
    process.stdout.write(`${hashPassword(password)}\n`);
    return 0;
  }
  process.stderr.write('usage: instance.cjs render OUT_DIR | instance.cjs hash-password < password\n');
  return 2;
}

if (require.main === module) {
  try {
    process.exit(main(process.argv.slice(2)));
  } catch (error) {
    process.stderr.write(`instance.cjs: ${error.message}\n`);
    process.exit(1);
  }
}
module.exports = { render };
