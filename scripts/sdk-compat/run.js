#!/usr/bin/env node
// Baton's SDK compatibility check: drives the published Messenger SDK
// `messaging-api-messenger` (exactly 1.1.0, unmodified) against Baton's
// Graph-compatible API. The only changes from talking to Meta are the SDK's
// own `origin` option (Baton's base URL instead of https://graph.facebook.com)
// and the access token (the app's Baton token instead of a page token).
//
//   node scripts/sdk-compat/run.js --origin http://127.0.0.1:PORT \
//     [--modules DIR] [--version 21.0] [--psid u1] \
//     [--bot-token baton-bot --bot-app 1001] \
//     [--human-token baton-human --human-app 1002 --human-secret human-app-secret]
//
// `--modules` is the node_modules directory the SDK was installed into
// (tests/system/sdk.rs installs it under the cargo target directory with
// `npm ci`); without it, Node's usual resolution applies (`npm ci` here).
//
// It prints one JSON line per call, in order:
//   {"sdk":"messaging-api-messenger","sdk_version":"1.1.0","node":"v…"}
//   {"step":N,"name":"…","as":"bot"|"human","ok":true,"result":…,"requests":["POST http://…"]}
//   {"step":N,"name":"…","as":"…","ok":false,"error":{"message","name","status","data"},"requests":[…]}
// and a last line {"done":true,"calls":N}. It exits 0 whatever the calls
// answered: judging the answers is the Rust test's job. It exits 2 on bad
// usage and 3 when the SDK cannot be loaded.
//
// The sequence is valid under Conversation Routing with the bot as default
// app (allowed to take) once the user has written to the page (the bot owns
// the thread).

'use strict';

const path = require('path');

function parseArgs(argv) {
  const opts = {
    version: '21.0',
    psid: 'u1',
    botToken: 'baton-bot',
    botApp: '1001',
    humanToken: 'baton-human',
    humanApp: '1002',
    humanSecret: null,
    modules: null,
    origin: null,
  };
  const names = {
    '--origin': 'origin',
    '--modules': 'modules',
    '--version': 'version',
    '--psid': 'psid',
    '--bot-token': 'botToken',
    '--bot-app': 'botApp',
    '--human-token': 'humanToken',
    '--human-app': 'humanApp',
    '--human-secret': 'humanSecret',
  };
  for (let i = 0; i < argv.length; i += 1) {
    const key = names[argv[i]];
    if (!key || i + 1 >= argv.length) {
      throw new Error(`unknown or incomplete argument: ${argv[i]}`);
    }
    opts[key] = argv[i + 1];
    i += 1;
  }
  if (!opts.origin) {
    throw new Error('--origin (Baton\'s base URL) is required');
  }
  opts.origin = opts.origin.replace(/\/+$/, '');
  return opts;
}

function loadSdk(modules) {
  const id = 'messaging-api-messenger';
  const resolved = modules
    ? require.resolve(id, { paths: [path.resolve(modules)] })
    : require.resolve(id);
  // eslint-disable-next-line global-require, import/no-dynamic-require
  const sdk = require(resolved);
  const pkg = require(path.join(path.dirname(resolved), '..', 'package.json'));
  return { sdk, version: pkg.version };
}

function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

// What a failed SDK call carried: the SDK wraps axios errors (axios-error),
// keeping the HTTP response.
function describeError(err) {
  const response = err && err.response;
  return {
    message: String((err && err.message) || err),
    name: err && err.name,
    status: response ? response.status : null,
    data: response ? response.data : null,
  };
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`run.js: ${e.message}\n`);
    process.exit(2);
  }
  let loaded;
  try {
    loaded = loadSdk(opts.modules);
  } catch (e) {
    process.stderr.write(`run.js: cannot load messaging-api-messenger: ${e.message}\n`);
    process.exit(3);
  }
  const { MessengerClient, MessengerBatch } = loaded.sdk;
  emit({ sdk: 'messaging-api-messenger', sdk_version: loaded.version, node: process.version });

  // Each step's requests as the SDK reports them (its `onRequest` hook:
  // method and URL, the body before the SDK snake-cases it).
  let requests = [];
  const onRequest = (r) => {
    requests.push(`${String(r.method).toUpperCase()} ${r.url}`);
  };
  // The bot: the SDK's documented configuration, only `origin` changed.
  const bot = new MessengerClient({
    accessToken: opts.botToken,
    version: opts.version,
    origin: opts.origin,
    onRequest,
  });
  // The human inbox also passes its app secret, so every request carries
  // the SDK's `appsecret_proof`.
  const humanConfig = {
    accessToken: opts.humanToken,
    version: opts.version,
    origin: opts.origin,
    onRequest,
  };
  if (opts.humanSecret) {
    humanConfig.appSecret = opts.humanSecret;
  }
  const human = new MessengerClient(humanConfig);
  const clients = { bot, human };

  const psid = opts.psid;
  const botApp = Number(opts.botApp);
  const humanApp = Number(opts.humanApp);

  // v1.1.0 has no method for release_thread_control: it goes through the
  // client's own HTTP instance (`client.axios`, public in the SDK's types),
  // with the SDK's request conventions (token in the query, JSON body,
  // snake_case keys, appsecret_proof when configured).
  const release = (client, recipientId) =>
    client.axios
      .post(`/me/release_thread_control?access_token=${client.accessToken}`, {
        recipient: { id: recipientId },
      })
      .then((res) => res.data);

  const steps = [
    ['getPageInfo', 'bot', (c) => c.getPageInfo()],
    ['sendText', 'bot', (c) => c.sendText(psid, 'Hello from the SDK')],
    [
      'sendText.quickReplies',
      'bot',
      (c) =>
        c.sendText(psid, 'Pick a colour', {
          messagingType: 'RESPONSE',
          quickReplies: [
            { contentType: 'text', title: 'Red', payload: 'COLOUR_RED' },
            { contentType: 'text', title: 'Green', payload: 'COLOUR_GREEN' },
          ],
        }),
    ],
    [
      'sendButtonTemplate',
      'bot',
      (c) =>
        c.sendButtonTemplate(
          psid,
          'What do you want to do next?',
          [
            { type: 'postback', title: 'Talk to a human', payload: 'HUMAN' },
            { type: 'web_url', url: 'https://example.com/help', title: 'Help' },
          ],
          { messagingType: 'RESPONSE' }
        ),
    ],
    ['typingOn', 'bot', (c) => c.typingOn(psid)],
    ['markSeen', 'bot', (c) => c.markSeen(psid)],
    ['sendSenderAction.typing_off', 'bot', (c) => c.sendSenderAction(psid, 'typing_off')],
    ['getUserProfile', 'bot', (c) => c.getUserProfile(psid)],
    [
      'sendBatch',
      'bot',
      (c) =>
        c.sendBatch([
          MessengerBatch.sendText(psid, 'Batch one'),
          MessengerBatch.sendText(psid, 'Batch two'),
        ]),
    ],
    ['getSecondaryReceivers', 'bot', (c) => c.getSecondaryReceivers()],
    ['getThreadOwner', 'bot', (c) => c.getThreadOwner(psid)],
    [
      'passThreadControl',
      'bot',
      (c) => c.passThreadControl(psid, humanApp, 'needs a human'),
    ],
    ['getThreadOwner', 'human', (c) => c.getThreadOwner(psid)],
    [
      'sendText',
      'human',
      (c) => c.sendText(psid, 'A human here', { messagingType: 'RESPONSE' }),
    ],
    // Refused: the human inbox controls the thread (10/2018300).
    ['sendText', 'bot', (c) => c.sendText(psid, 'The bot talking over the human')],
    ['requestThreadControl', 'bot', (c) => c.requestThreadControl(psid, 'the bot would like it back')],
    ['passThreadControl', 'human', (c) => c.passThreadControl(psid, botApp, 'back to the bot')],
    ['getThreadOwner', 'bot', (c) => c.getThreadOwner(psid)],
    ['passThreadControl', 'bot', (c) => c.passThreadControl(psid, humanApp, 'a human again')],
    ['takeThreadControl', 'bot', (c) => c.takeThreadControl(psid, 'the bot takes it back')],
    ['getThreadOwner', 'bot', (c) => c.getThreadOwner(psid)],
    ['passThreadControl', 'bot', (c) => c.passThreadControl(psid, humanApp, 'once more')],
    ['releaseThreadControl', 'human', (c) => release(c, psid)],
    ['takeThreadControl', 'bot', (c) => c.takeThreadControl(psid, 'an idle thread')],
    ['getThreadOwner', 'bot', (c) => c.getThreadOwner(psid)],
  ];

  let step = 0;
  for (const [name, as, call] of steps) {
    step += 1;
    requests = [];
    try {
      // eslint-disable-next-line no-await-in-loop
      const result = await call(clients[as]);
      emit({ step, name, as, ok: true, result: result === undefined ? null : result, requests });
    } catch (err) {
      emit({ step, name, as, ok: false, error: describeError(err), requests });
    }
  }
  emit({ done: true, calls: step });
}

main().catch((e) => {
  process.stderr.write(`run.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
