"""Drives a running gatehouse for instructions.sh: N operations of one scenario over four
keep-alive connections. What a scenario needs first (a session and consent, a refresh
token, an access token) is kept in STATE_DIR, so that a second call (the measured one)
does none of it again and counts only the operations."""
import base64
import hashlib
import http.client
import json
import os
import re
import sys
import urllib.parse

port, scenario, count, state_dir = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
SECRET = "bench-client-secret-0123456789"  # as in benches/load/server.rs
USER, PASSWORD = "bench", "bench password 0123"
REDIRECT_URI = "https://app.example.com/callback"
FORM = "application/x-www-form-urlencoded"
CONNECTIONS = 4

conns = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(CONNECTIONS)]
state_file = os.path.join(state_dir, scenario + ".json")
state = json.load(open(state_file)) if os.path.exists(state_file) else {}
cookies = state.get("cookies") or [{} for _ in range(CONNECTIONS)]


def request(i, method, path, body=None, headers=None, client=None):
    headers = dict(headers or {})
    if body is not None:
        headers["Content-Type"] = FORM
    if client:
        token = base64.b64encode(f"{client}:{SECRET}".encode()).decode()
        headers["Authorization"] = "Basic " + token
    if cookies[i]:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies[i].items())
    conns[i].request(method, path, body, headers)
    reply = conns[i].getresponse()
    data = reply.read()
    for name, value in reply.getheaders():
        if name.lower() == "set-cookie":
            key, val = value.split(";")[0].split("=", 1)
            cookies[i][key] = val
    return reply, data


def expect(status, reply, data):
    if reply.status != status:
        sys.exit(f"{scenario}: expected {status}, got {reply.status}: {data[:300]!r}")
    return data


def token(i, body, client):
    return json.loads(expect(200, *request(i, "POST", "/token", body, client=client)))


def hidden_fields(page):
    return re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)


def pkce(seed):
    verifier = f"instructions-verifier-{seed:020}-0123456789abcdefghijkl"
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def authorize_path(challenge):
    return "/authorize?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": "webapp", "redirect_uri": REDIRECT_URI,
        "scope": "read", "state": "x", "code_challenge": challenge,
        "code_challenge_method": "S256"})


def password_grant(i):
    body = urllib.parse.urlencode(
        {"grant_type": "password", "username": USER, "password": PASSWORD})
    return token(i, body, "legacy")


def prepare():
    if scenario == "refresh" and "refresh" not in state:
        state["refresh"] = [password_grant(i)["refresh_token"] for i in range(CONNECTIONS)]
    if scenario == "introspection" and "access" not in state:
        state["access"] = token(0, "grant_type=client_credentials", "service")["access_token"]
    if scenario == "flow" and not state.get("cookies"):
        for i in range(CONNECTIONS):
            page = expect(200, *request(i, "GET", "/login")).decode()
            csrf = dict(hidden_fields(page))["csrf_token"]
            body = urllib.parse.urlencode({"username": USER, "password": PASSWORD,
                                           "csrf_token": csrf, "return_to": ""})
            expect(303, *request(i, "POST", "/login", body))
            reply, page = request(i, "GET", authorize_path(pkce(0)[1]))
            if reply.status == 200:
                fields = hidden_fields(page.decode()) + [("decision", "allow")]
                expect(303, *request(i, "POST", "/consent", urllib.parse.urlencode(fields)))
        state["cookies"] = cookies
        state["counter"] = 0


def operate(n):
    i = n % CONNECTIONS
    if scenario == "healthz":
        expect(200, *request(i, "GET", "/healthz"))
    elif scenario == "client_credentials":
        token(i, "grant_type=client_credentials", "service")
    elif scenario == "password":
        password_grant(i)
    elif scenario == "refresh":
        body = urllib.parse.urlencode(
            {"grant_type": "refresh_token", "refresh_token": state["refresh"][i]})
        state["refresh"][i] = token(i, body, "legacy")["refresh_token"]
    elif scenario == "introspection":
        data = expect(200, *request(i, "POST", "/introspect", "token=" + state["access"],
                                    client="service"))
        if b'"active":true' not in data:
            sys.exit(f"introspection: inactive: {data!r}")
    elif scenario == "flow":
        state["counter"] += 1
        verifier, challenge = pkce(state["counter"])
        reply, data = request(i, "GET", authorize_path(challenge))
        expect(303, reply, data)
        query = urllib.parse.urlparse(reply.getheader("location")).query
        code = urllib.parse.parse_qs(query)["code"][0]
        token(i, urllib.parse.urlencode({"grant_type": "authorization_code", "code": code,
                                         "redirect_uri": REDIRECT_URI,
                                         "code_verifier": verifier}), "webapp")
    else:
        sys.exit(f"unknown scenario {scenario}")


prepare()
for n in range(count):
    operate(n)
json.dump(state, open(state_file, "w"))
