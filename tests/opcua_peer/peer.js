"use strict";
/*
 * node-opcua as an independent OPC-UA client: flexcharge's conformance tests run it against the
 * simulator's asyncua server (tests/test_opcua_peer.py). It shares no code with flexcharge.
 *
 *     node peer.js CASES.json RESULTS.jsonl
 *
 * CASES.json: {"url", "server_cert" (PEM of the server's certificate), "ca" (PEM of the CA the
 * client trusts servers by), "crl" (PEM CRL of that CA, or null), "pki" (a scratch directory),
 * "timeout_ms", "cases": [...]}; each case: {"name", "policy" (node-opcua's SecurityPolicy name:
 * Basic256Sha256, Aes128_Sha256_RsaOaep, Basic256, Basic128Rsa15, None), "mode" (None, Sign,
 * SignAndEncrypt), "cert", "key" (PEM files), "user", "password", "read" (NodeIds), "write"
 * ([{"node", "type" (Double, Int64), "value"}]), and optionally:
 *   "crl": false        the client trusts the CA without its CRL;
 *   "pin_server": true  the client holds the server's certificate, as one configured for this
 *                       server does, and sends the case's policy and mode without asking the
 *                       server's endpoints first (and without checking the server's certificate);
 *   "declare_uri": URI  the client declares this application URI in CreateSession (node-opcua
 *                       always declares its certificate's).
 *
 * Writes one JSON line per case to RESULTS.jsonl (node-opcua logs to stdout): {"name",
 * "policy", "mode", "outcome", "status", "message", "reads", "writes"}. outcome: "session" (a
 * session was activated; reads and writes were done), "refused" (the server or this client said
 * no, with `status` where node-opcua reports one), "timeout" (no answer within timeout_ms: the
 * client's own limit, far above what an answer takes), or "error" (a read or write of an
 * activated session failed as a whole).
 */

const fs = require("fs");
const path = require("path");
const {
    OPCUAClient,
    MessageSecurityMode,
    SecurityPolicy,
    UserTokenType,
    AttributeIds,
    DataType,
    VariantArrayType,
} = require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");

const STATUS = /\bBad[A-Za-z]+\b/;
const TIMEOUT = /time ?out|timed out/i;

function der(pemFile) {
    const text = fs.readFileSync(pemFile, "utf8");
    const body = text.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
    return Buffer.from(body, "base64");
}

function statusName(code) {
    return code && typeof code.name === "string" ? code.name : String(code);
}

async function certificateManager(spec, withCrl) {
    const root = path.join(spec.pki, withCrl ? "with-crl" : "without-crl");
    const manager = new OPCUACertificateManager({
        rootFolder: root,
        automaticallyAcceptUnknownCertificate: false,
    });
    await manager.initialize();
    await manager.addIssuer(der(spec.ca), false, true);
    if (withCrl && spec.crl) {
        await manager.addRevocationList(der(spec.crl), "trusted");
    }
    return manager;
}

function withTimeout(promise, ms) {
    let timer;
    const limit = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`peer timeout after ${ms} ms`)), ms);
    });
    return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function variant(item) {
    const types = { Double: DataType.Double, Int64: DataType.Int64 };
    const dataType = types[item.type];
    if (dataType === undefined) {
        throw new Error(`unknown data type ${item.type}`);
    }
    const value = item.type === "Int64" ? [0, item.value] : item.value;
    return { dataType, arrayType: VariantArrayType.Scalar, value };
}

async function session(client, testCase, result) {
    const identity = testCase.user
        ? { type: UserTokenType.UserName, userName: testCase.user, password: testCase.password }
        : { type: UserTokenType.Anonymous };
    const opened = await client.createSession(identity);
    result.activated = true;
    try {
        const reads = [];
        if (testCase.read && testCase.read.length) {
            const values = await opened.read(
                testCase.read.map((nodeId) => ({ nodeId, attributeId: AttributeIds.Value }))
            );
            values.forEach((dataValue, i) => {
                let value = dataValue.value ? dataValue.value.value : null;
                if (Array.isArray(value) && value.length === 2 && dataValue.value.dataType === DataType.Int64) {
                    value = value[0] * 4294967296 + value[1];
                }
                reads.push({ node: testCase.read[i], status: statusName(dataValue.statusCode), value });
            });
        }
        let writes = [];
        if (testCase.write && testCase.write.length) {
            const results = await opened.write(
                testCase.write.map((item) => ({
                    nodeId: item.node,
                    attributeId: AttributeIds.Value,
                    value: { value: variant(item) },
                }))
            );
            writes = results.map(statusName);
        }
        return { reads, writes };
    } finally {
        await opened.close();
    }
}

async function run(spec, testCase) {
    const client = OPCUAClient.create({
        applicationName: "node-opcua conformance peer",
        clientCertificateManager: await certificateManager(spec, testCase.crl !== false),
        certificateFile: testCase.cert,
        privateKeyFile: testCase.key,
        securityMode: MessageSecurityMode[testCase.mode],
        securityPolicy: SecurityPolicy[testCase.policy],
        serverCertificate: testCase.pin_server ? der(spec.server_cert) : undefined,
        // Send what the case asks for even where the server's endpoint list does not offer it:
        // the server, not this client, is under test.
        endpointMustExist: false,
        connectionStrategy: { maxRetry: 0, initialDelay: 10, maxDelay: 10 },
        transportTimeout: spec.timeout_ms,
        defaultTransactionTimeout: spec.timeout_ms,
        requestedSessionTimeout: 60000,
        keepSessionAlive: false,
    });
    if (testCase.declare_uri) {
        // A client that declares another application URI than its certificate's.
        client._getApplicationUri = () => testCase.declare_uri;
    }
    const result = { name: testCase.name, policy: testCase.policy, mode: testCase.mode };
    try {
        await withTimeout(
            (async () => {
                await client.connect(spec.url);
                Object.assign(result, await session(client, testCase, result));
            })(),
            spec.timeout_ms
        );
        result.outcome = "session";
        result.status = "Good";
    } catch (err) {
        const message = String((err && err.message) || err);
        const found = message.match(STATUS);
        result.message = message.split("\n").join(" | ");
        if (result.activated) {
            result.outcome = "error"; // activated, then a read or write failed as a whole
            result.status = null;
        } else if (found) {
            result.outcome = "refused";
            result.status = found[0];
        } else if (TIMEOUT.test(message)) {
            result.outcome = "timeout";
            result.status = null;
        } else {
            result.outcome = "refused";
            result.status = null;
        }
    } finally {
        await client.disconnect().catch(() => undefined);
    }
    return result;
}

async function main() {
    const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
    const output = process.argv[3];
    fs.writeFileSync(output, "");
    for (const testCase of spec.cases) {
        const result = await run(spec, testCase);
        fs.appendFileSync(output, JSON.stringify(result) + "\n");
    }
}

main().then(
    () => process.exit(0),
    (err) => {
        process.stderr.write(`peer failed: ${err && err.stack ? err.stack : err}\n`);
        process.exit(2);
    }
);
