@0xd268ef5704719ced;
# Grainhouse grain contract — the app-facing rules and the grainmgr <-> bridge control plane.
#
# Who this file is for:
#   * grainmgr authors (bridge.py, launcher.py): the `Bridge` interface is what grainmgr calls
#     on a grain; `PlatformBackend` is what grainmgr serves to it (for the bridge's `Platform`).
#   * bridge authors: the bridge is PID 1 of a grain's pid namespace. It starts the app's
#     command from the manifest, waits for it to listen on its HTTP port on loopback, and speaks
#     Cap'n Proto (two-party, this file) to grainmgr over file descriptor 3 — the only channel
#     out of the sandbox besides the stream hand-over socket on fd 4 (`streamFd`, see
#     `Bridge.openStream`), on which the bridge hands grainmgr sockets connected to the app.
#   * app authors: you need only the HTTP rules in section 1 (which headers you receive and what
#     they mean). An app speaks plain HTTP on loopback and never has to touch Cap'n Proto. An app
#     that wants platform services (logging, wake locks, …) may connect to `appApiSocket` and
#     call `Platform`, which the bridge serves (forwarding what only grainmgr knows).
#   * the frontend authors read section 1 too: the frontend is the only component that parses
#     HTTP from the outside world, so it is the one that strips and sets these headers.
#
# Trust: grainmgr never trusts anything a grain says. Every value coming from the bridge (view
# info, log lines, Platform arguments) is untrusted input: grainmgr bounds its size, rate-limits
# it, and never lets it name a file, a grain or a user outside this grain. Conversely the bridge
# trusts grainmgr completely: it is the grain's whole world.
#
# Evolution: ordinals (@N) of fields, methods and enumerants are NEVER reused or renumbered. A
# retired member keeps its ordinal and gets the prefix `obsolete` in its name. New members are
# appended with the next ordinal. The file id above never changes.
#
# Errors: methods fail with Cap'n Proto exceptions. Their types mean:
#   failed        this request is wrong or cannot be done (the description says why; retrying the
#                 same call will fail the same way);
#   overloaded    a limit or rate limit was hit: retry later, with backoff;
#   disconnected  the other side went away (grain stopped or grainmgr restarted): grainmgr
#                 restarts the grain on next use; the bridge exits when fd 3 closes;
#   unimplemented the method is newer than the peer: treat as "feature absent", never as an
#                 error to show.
# Our servers run on pycapnp, which fails every call a Python method refuses with `failed`
# (whatever exception it raised) and the Python traceback as the description: a limit that
# this file names (the description says "too many …") arrives as `failed`, not `overloaded`.
# Callers match the description's words, never the traceback's file paths.

# =============================================================================================
# Section 1 — HTTP as the app sees it (data, not code: the frontend and tests read these lists)
# =============================================================================================

enum HeaderMatch {
  # How a HeaderRule's name is compared with a header name (always case-insensitively, as HTTP
  # header names are).
  exact @0;
  # The rule covers every header whose name starts with `name`.
  prefix @1;
}

struct HeaderRule {
  # One header the platform treats specially, and why. Kept as data so the frontend's header
  # filter and its tests use the very list documented here.

  name @0 :Text;
  # Canonical spelling of the header name (or prefix, see `match`).

  match @1 :HeaderMatch;
  # Whether `name` is a whole header name or a prefix.

  reason @2 :Text;
  # Why the platform does this, for humans: the policy explains itself where it is declared.
}

const identityHeaders :List(HeaderRule) = [
  # Headers the platform adds to every request it forwards to the app. Names are Sandstorm's,
  # so apps written for Sandstorm's HTTP bridge run unchanged. Values are UTF-8, percent-encoded
  # where marked, and never empty unless marked. A client can never set them: see
  # `strippedRequestHeaders`.
  ( name = "X-Sandstorm-User-Id", match = exact,
    reason = "Stable, opaque id of the account (32 lowercase hex chars), the same on every grain "
             "of this server so the app can remember a user. Absent for anonymous visitors, "
             "which is how an app tells them apart. Not the platform's internal account id." ),
  ( name = "X-Sandstorm-Username", match = exact,
    reason = "Display name, percent-encoded UTF-8, for showing who did what. Untrusted text "
             "chosen by the user: the app must escape it and must not use it as a key." ),
  ( name = "X-Sandstorm-Preferred-Handle", match = exact,
    reason = "The user's preferred short handle ([a-z0-9_]), for apps that need a username-like "
             "string. Not unique and may change; absent if the user set none." ),
  ( name = "X-Sandstorm-Permissions", match = exact,
    reason = "Comma-separated permission names from the app's manifest that this user holds on "
             "this grain, already reduced along the sharing chain. Empty value = may open, may "
             "do nothing else. The app enforces these; the platform enforces only who may open." ),
  ( name = "X-Sandstorm-Session-Id", match = exact,
    reason = "Random id of this session (one user, one grain, one browser origin), the same as "
             "SessionParams.sessionId, so the app can tie requests to Platform.getIdentity." ),
  ( name = "X-Sandstorm-Tab-Id", match = exact,
    reason = "Random id of the browser tab, stable across reloads of that tab, so an app can "
             "keep per-tab state. Absent for API sessions." ),
  ( name = "X-Sandstorm-Session-Type", match = exact,
    reason = "\"normal\" for a person in a browser, \"api\" for a bearer-token client on the API "
             "host; apps use it to skip HTML and CSRF checks for API clients." ),
  ( name = "X-Sandstorm-Base-Path", match = exact,
    reason = "Absolute URL of the app's root as this session sees it, without trailing slash "
             "(for example https://ui-3fk2q.example.org). Changes between sessions: use it for "
             "links in mails or feeds, prefer relative URLs elsewhere." ),
];

const strippedRequestHeaders :List(HeaderRule) = [
  # Headers (or parts of them) the frontend removes from every client request before the bytes
  # go to the relay, so a client can neither impersonate another user to the app nor hand the
  # app a credential of the platform.
  ( name = "X-Sandstorm-", match = prefix,
    reason = "Identity is the platform's word, never the client's: every client-sent header with "
             "this prefix is removed before the platform sets its own (identityHeaders)." ),
  ( name = "X-Grainhouse-", match = prefix,
    reason = "Reserved for the platform's own internal headers; a client must not be able to "
             "forge them." ),
  ( name = "Cookie", match = exact,
    reason = "Only the platform's own cookies (names starting with `platformCookiePrefix`) are "
             "removed from the header; the app's own cookies pass. A grain must never see a "
             "platform session secret." ),
  ( name = "Authorization", match = exact,
    reason = "Removed when it carries a platform bearer token (prefix gh?_) — the API host's "
             "credential, already checked by auth. Other schemes (the app's own Basic auth) pass "
             "unchanged." ),
  ( name = "Proxy-Authorization", match = exact,
    reason = "A credential for a proxy, never for the app." ),
  ( name = "Forwarded", match = exact,
    reason = "Client-sent forwarding claims are lies until proven otherwise; the frontend sets "
             "its own X-Forwarded-For / X-Forwarded-Proto after removing these." ),
  ( name = "X-Forwarded-", match = prefix,
    reason = "As Forwarded: removed, then set by the frontend from the real connection." ),
  ( name = "X-Real-Ip", match = exact,
    reason = "A client-sent claim about its own address, trusted by some apps for logging or "
             "rate limits: removed; the frontend sets X-Forwarded-For from the real connection "
             "instead." ),
];

const overriddenResponseHeaders :List(HeaderRule) = [
  # Response headers the frontend removes from the app's answer and replaces with its own, so a
  # grain cannot weaken the browser isolation it lives in.
  ( name = "Content-Security-Policy", match = exact,
    reason = "The platform sets a CSP whose frame-ancestors is only the platform origin; an "
             "app's own policy is intersected, never allowed to replace it." ),
  ( name = "X-Frame-Options", match = exact,
    reason = "Framing is governed by the platform's frame-ancestors." ),
  ( name = "Set-Cookie", match = exact,
    reason = "Only cookies whose names start with `platformCookiePrefix` are dropped, so an app "
             "cannot plant or overwrite the platform's cookies; the app's own cookies pass." ),
  ( name = "Strict-Transport-Security", match = exact,
    reason = "HSTS is a property of the platform's domain, decided by the operator." ),
];

const platformCookiePrefix :Text = "grainhouse_";
# Every cookie the platform sets (on its own host or on a grain's ui-<id> origin) has a name
# starting with this; see strippedRequestHeaders / overriddenResponseHeaders.

const sessionTypeNormal :Text = "normal";
const sessionTypeApi :Text = "api";
# The two values of X-Sandstorm-Session-Type (SessionParams.sessionType).

# =============================================================================================
# Section 2 — shared structures
# =============================================================================================

struct Identity {
  # Who a session belongs to, as the app may know it. Mirrors grainhouse.common.v1.AppIdentity
  # in common.proto; never contains a credential.

  userId @0 :Text;
  # X-Sandstorm-User-Id. Empty for an anonymous visitor.

  displayName @1 :Text;
  # X-Sandstorm-Username (not percent-encoded here). Never empty.

  preferredHandle @2 :Text;
  # X-Sandstorm-Preferred-Handle. May be empty.

  pictureUrl @3 :Text;
  # Avatar URL. May be empty.

  isAnonymous @4 :Bool;
}

struct PermissionDef {
  # One permission the app defines. See common.proto PermissionDef.
  name @0 :Text;
  title @1 :Text;
  description @2 :Text;
}

struct RoleDef {
  # One role (a named bundle of permissions). See common.proto RoleDef.
  name @0 :Text;
  title @1 :Text;
  verbPhrase @2 :Text;
  permissions @3 :List(Text);
  # Names from ViewInfo.permissions. Unknown names are refused by grainmgr.
  isDefault @4 :Bool;
  obsolete @5 :Bool;
}

struct ViewInfo {
  # The app's sharing model. Normally read from the manifest by grainmgr; an app may compute it
  # at run time, and then the bridge answers getViewInfo from the app. grainmgr caps it (at most
  # 64 permissions, 32 roles, 1 KiB per text) and refuses the whole answer if it breaks a cap.
  permissions @0 :List(PermissionDef);
  roles @1 :List(RoleDef);
}

struct SessionParams {
  # Everything the bridge learns about a new session. The same facts reach the app as
  # identityHeaders on each request.

  sessionId @0 :Text;
  # Random, unique per grain; X-Sandstorm-Session-Id. Never empty.

  identity @1 :Identity;

  permissions @2 :List(Text);
  # Effective permission names; X-Sandstorm-Permissions. May be empty.

  tabId @3 :Text;
  # X-Sandstorm-Tab-Id. Empty for API sessions.

  sessionType @4 :Text;
  # sessionTypeNormal or sessionTypeApi; X-Sandstorm-Session-Type.

  basePath @5 :Text;
  # X-Sandstorm-Base-Path: absolute URL, no trailing slash.

  userAgent @6 :Text;
  acceptLanguages @7 :List(Text);
  # From the client's request, for apps that localise. May be empty.
}

struct Health {
  # What ping reports.

  appListening @0 :Bool;
  # True once the app accepts connections on its HTTP port; grainmgr reports the grain RUNNING
  # only then.

  uptimeSeconds @1 :UInt64;
  # Since the bridge started.

  openStreams @2 :UInt32;
  # Byte streams handed to grainmgr since the bridge started (a running total). Since the
  # bridge hands each stream's app socket to grainmgr and keeps no copy, it never sees a stream
  # end; grainmgr counts the open ones. (Before that change: streams the bridge spliced now.)

  liveSessions @3 :UInt32;
  # SessionHandles not yet dropped.
}

enum LogLevel {
  debug @0;
  info @1;
  warning @2;
  error @3;
}

# =============================================================================================
# Section 3 — Bridge: what grainmgr calls on a grain (bootstrap capability the bridge exports
# on fd 3). Apps never see it.
# =============================================================================================

interface Bridge {
  getViewInfo @0 () -> (viewInfo :ViewInfo);
  # The app's roles and permissions. The bridge answers from the manifest it was started with,
  # unless the app serves its own (then it asks the app). Idempotent, read-only. grainmgr calls
  # it at most once per start and treats the answer as untrusted (see ViewInfo caps). Fails:
  # `failed` if the app's own answer is malformed.

  newSession @1 (params :SessionParams) -> (session :SessionHandle);
  # Tell the bridge that a session exists, before any stream of it is opened. The bridge keeps
  # the params so Platform.getIdentity can answer for this session id. The session lives while
  # grainmgr holds the returned handle; dropping it (or SessionHandle.close) ends it and drops
  # its unused stream keys. Its open streams are grainmgr's (see openStream): grainmgr drops a
  # handle only when none of the session's streams is open, and cuts them all when the grain
  # stops. Calling again with a session id that is live fails with `failed`: session ids
  # are never reused. grainmgr calls it from GrainManager.OpenSession.

  openStream @2 (sessionId :Text, streamKey :Data) -> ();
  # Open one byte stream of a live session. HTTP never travels as one RPC per request (we
  # measured one Cap'n Proto call per request at ~7x slower than a byte relay): this call only
  # sets a stream up; the bytes then flow over a socket connected to the app, which grainmgr
  # splices to the frontend's connection. Protocol: the bridge connects to the app's HTTP port
  # on loopback (or its Unix socket), waiting for a starting app to listen (at most the start
  # timeout), then sends on the hand-over socket (`streamFd`, a SOCK_SEQPACKET socket) one
  # datagram whose bytes are `streamKey` (32 bytes, chosen at random by grainmgr for this call)
  # with the connected socket attached as SCM_RIGHTS, closes its own copy (it keeps none: the
  # app sees EOF when grainmgr closes), and only then returns. So when the call returns, the
  # datagram is already queued on `streamFd`. grainmgr treats the datagram as hostile: it takes
  # exactly one fd, a stream socket (TCP or Unix), under a key it asked for within its own
  # timeout (10 s); anything else is closed and counted against the grain. One stream carries one
  # session only; grainmgr (not the bridge) cuts a grain's streams when it stops. Not
  # idempotent (each call opens a connection to the app). Fails: `failed` for an unknown session
  # id, a key that is not 32 bytes, a session that ended while the app was being connected, or
  # an app that refuses the connection, and above the per-grain limit of streams being
  # connected at once (256: "too many streams"). (Earlier drafts had the bridge listen on `streamSocket`, and then
  # grainmgr send the bridge a socket pair's end on `streamFd` to splice to the app: two relay
  # hops. Handing the app's socket out instead leaves one hop, in grainmgr.)

  ping @3 () -> (health :Health);
  # Liveness and readiness. Cheap, read-only, idempotent. grainmgr calls it after start (until
  # appListening) and then periodically; no answer within the ping timeout counts as a crash.

  shutdown @4 (graceSeconds :UInt32) -> ();
  # Stop gracefully: refuse new sessions and streams, send SIGTERM to the app, wait up to
  # graceSeconds (0 = the bridge's default, 10 s) for it to exit, then SIGKILL it; then return.
  # The bridge exits right after answering, which ends the grain (it is PID 1). Idempotent: a
  # second call while shutting down waits for the same end. grainmgr never relies on the answer
  # arriving — it also waits for the grain's processes to be gone.
}

interface SessionHandle {
  # A live session. Held by grainmgr; dropping the last reference ends the session.

  close @0 () -> ();
  # End the session now: its unused stream keys are dropped and Platform.getIdentity stops
  # answering for it (its open streams are grainmgr's to close: see Bridge.openStream).
  # Idempotent.
}

# =============================================================================================
# Section 4 — Platform: what a grain's app may call on the platform. The bridge serves it to the
# app on `appApiSocket` (one two-party connection per client, bootstrap = Platform). `log` and
# `getIdentity` are answered by the bridge itself (it owns the grain's log pipe and knows the
# grain's live sessions); `stayAwake` and `getStorageUsage` are forwarded to `PlatformBackend`,
# the bootstrap capability grainmgr exports on fd 3 (both ends of fd 3 export a bootstrap:
# grainmgr's is `PlatformBackend`, the bridge's is `Bridge`). Everything here acts on the calling
# grain only; there is no way to name another grain.
# =============================================================================================

interface Platform {
  log @0 (level :LogLevel, message :Text) -> ();
  # Append a line to the grain's log (what GrainManager.StreamLogs shows the owner), as
  # `[app <level>] <message>`. A message above 8 KiB is cut; a line break inside it is written
  # as a line of its own, each with the prefix (the app cannot forge a line of the bridge's).
  # Lines beyond the rate limit (a burst of 200, then 50 a second) are dropped, never queued,
  # and counted in a later bridge line. Never fails except `disconnected`. (The app's stdout
  # and stderr go to the same log, unprefixed: this call adds the level.)

  getIdentity @1 (sessionId :Text) -> (identity :Identity, permissions :List(Text));
  # Who is behind a live session of this grain (X-Sandstorm-Session-Id of a request), and the
  # permissions the session was opened with (a change of the user's role opens a new session,
  # with a new id). Fails: `failed` for an unknown or ended session id (including sessions of
  # other grains: the grain cannot tell the difference).

  stayAwake @2 (reason :Text) -> (lock :WakeLock);
  # Keep the grain running without open sessions (a long import, a sync job), while `lock` is
  # held. `reason` (1 to 200 characters, control characters removed) says why: the owner sees
  # it with the grain (Grain.awake_reasons in grainmgr.proto) while the lock is held. The
  # platform may still stop the grain (owner's stop, trash, shutdown, crash); then the lock is
  # gone and the app learns it from the dropped connection. Closing the connection that got
  # the lock releases it. Fails (`failed`, see Errors above): "needs a reason" for an empty
  # reason, "at most 200 characters", and "too many wake locks" beyond the per-grain limit (4).

  getStorageUsage @3 () -> (sizeBytes :UInt64, quotaBytes :UInt64);
  # Bytes used by /var (measured at most every 10 s; a call in between answers the last
  # measure) and the grain's quota (0 = no quota). Read-only.
}

interface WakeLock {
  # Held to keep the grain awake (see Platform.stayAwake). Dropping it releases the lock.

  release @0 () -> ();
  # Release now. Idempotent.
}

interface PlatformBackend {
  # What grainmgr serves the bridge on fd 3 (its bootstrap), for the `Platform` calls only
  # grainmgr can answer. Calls arrive from inside the sandbox: grainmgr treats every argument
  # as hostile (bounded, sanitized, rate-limited by the limits below) and acts on this grain
  # only. Apps never see it directly; the bridge passes `WakeLock`s through unchanged.

  stayAwake @0 (reason :Text) -> (lock :WakeLock);
  # As Platform.stayAwake: grainmgr keeps the grain out of its idle stop while any lock is
  # held (a stop for any other reason still happens), and lists the locks' reasons with the
  # grain. The lock ends with `release`, when its last reference is dropped (the bridge's
  # connection to the app, or fd 3, closes) or when the grain stops. Fails (`failed`): as
  # Platform.stayAwake, and "the grain is stopping" while it stops.

  getStorageUsage @1 () -> (sizeBytes :UInt64, quotaBytes :UInt64);
  # As Platform.getStorageUsage (grainmgr measures /var on the host, at most every 10 s).
}

# =============================================================================================
# Section 5 — fixed places and numbers of the contract
# =============================================================================================

const bridgeFd :UInt32 = 3;
# The file descriptor on which the bridge finds its Cap'n Proto connection to grainmgr. The
# launcher makes it and `streamFd` the only inherited fds besides 0, 1, 2; the bridge marks
# both close-on-exec so the app never holds them.

const streamSocket :Text = "/run/grainhouse/stream.sock";
# Not used (kept because constants are part of the contract): streams arrive on `streamFd`
# instead of a listening socket at this path. See Bridge.openStream.

const streamFd :UInt32 = 4;
# The file descriptor on which the bridge hands byte streams to grainmgr: a SOCK_SEQPACKET Unix
# socket; each datagram is a 32-byte stream key (from `Bridge.openStream`) with one socket
# connected to the app attached (SCM_RIGHTS). Only the bridge writes on it; grainmgr never
# does. Like `bridgeFd`, it is not inherited by the app.

const appApiSocket :Text = "@grainhouse/api";
# Where the bridge serves `Platform` to the app (Cap'n Proto two-party, bootstrap = Platform):
# an abstract Unix socket (the leading "@" stands for a NUL byte: connect to
# "\0grainhouse/api"), in the grain's own network namespace, so only the grain's own processes
# reach it and there is no file to delete or race for. Listening from before the app's first
# request. At most 16 connections at once (more are closed at once). Optional for apps: an app
# that never connects loses nothing but the Platform calls.

const appPortEnv :Text = "PORT";
# Environment variable through which the bridge tells the app which loopback TCP port to
# listen on (when the manifest does not fix one).

const streamKeyTimeoutSeconds :UInt32 = 30;
# How long a key passed to openStream stays usable in the bridge (it is used, or fails, within
# the call; grainmgr waits at most 10 s for the datagram).
