-- wrk script for the soak run (benches/soak.sh): clients that behave like
-- scripts. Each holds a refresh token from the rotating pool (SOAK_POOL, lines
-- "id token", rewritten by the rotator with mv), trades it for an access
-- token and calls the API with it; on 401 it exchanges again, and when the
-- exchange says invalid_grant it takes another token from the pool.
--
--   SOAK_MODE=api       exchange only when needed, otherwise GET the API
--   SOAK_MODE=exchange  every request is an exchange
--   SOAK_DELAY_MS       pause before each request (keeps the rate modest)
--   SOAK_COUNTS         where done() writes the counts ("name value" lines)
--
-- Run with one connection per thread (-t N -c N), so request() and
-- response() strictly alternate and `last` names the request being answered.
--
-- A refusal is expected when the pool no longer lists the refresh token (the
-- rotator takes it out of the file before deleting it), the access token's
-- expires_in has run out, or (401 invalid_token, the refresh token still
-- pooled) the access token was evicted: the exchange clients trade the same
-- refresh tokens hundreds of times a second, and each refresh token keeps at
-- most tokens.max_access_per_refresh live access tokens, dropping the oldest
-- (documented). Like a real script, the client then exchanges again; the
-- report checks that such refusals number no more than the gateway's
-- evictions. Any other refusal, 5xx or odd answer is unexpected.

local pool_file = os.getenv("SOAK_POOL")
local mode = os.getenv("SOAK_MODE") or "api"
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "2")
local counts_file = os.getenv("SOAK_COUNTS")

local names = {
    "exchange_ok", "exchange_refused_deleted", "api_ok", "api_refused_deleted",
    "api_refused_expired", "api_refused_evicted", "unexpected",
}

local threads = {}
function setup(thread)
    thread:set("thread_no", #threads + 1)
    table.insert(threads, thread)
end

-- Per thread (each has its own Lua state).
exchange_ok, exchange_refused_deleted, api_ok = 0, 0, 0
api_refused_deleted, api_refused_expired, api_refused_evicted, unexpected = 0, 0, 0, 0
local refresh, access, access_until, last
local reported = 0

local function read_pool()
    local list = {}
    local f = io.open(pool_file, "r")
    if f then
        for line in f:lines() do
            local tok = line:match("^%d+ (tgr_%w+)$")
            if tok then table.insert(list, tok) end
        end
        f:close()
    end
    return list
end

local function in_pool(tok)
    for _, t in ipairs(read_pool()) do
        if t == tok then return true end
    end
    return false
end

local function pick()
    local list = read_pool()
    if #list == 0 then return "tgr_pool_is_empty" end
    return list[math.random(#list)]
end

local function odd(what, status, body)
    unexpected = unexpected + 1
    if reported < 5 then
        reported = reported + 1
        io.stderr:write(string.format("soak %s: unexpected %s answer %d: %s\n", mode, what, status,
            (body or ""):sub(1, 200)))
    end
end

function init(args)
    math.randomseed(os.time() * 1000 + thread_no * 7919)
    refresh = pick()
end

function delay()
    return delay_ms
end

function request()
    if mode == "exchange" or access == nil then
        last = "exchange"
        return wrk.format("POST", "/iwc/api/security/oauth/token",
            { ["Content-Type"] = "application/x-www-form-urlencoded" },
            "grant_type=refresh_token&refresh_token=" .. refresh)
    end
    last = "api"
    return wrk.format("GET", "/iwc/api/databases", { ["Authorization"] = "Bearer " .. access })
end

function response(status, headers, body)
    if last == "exchange" then
        if status == 200 then
            local tok = body:match('"access_token":"(tga_[%w_%-]+)"')
            local ttl = tonumber(body:match('"expires_in":(%d+)'))
            if tok and ttl then
                exchange_ok = exchange_ok + 1
                if mode == "api" then
                    access, access_until = tok, os.time() + ttl - 1
                end
            else
                odd("exchange", status, body)
            end
        elseif status == 400 and body:find("invalid_grant", 1, true) and not in_pool(refresh) then
            exchange_refused_deleted = exchange_refused_deleted + 1
            refresh = pick()
        else
            odd("exchange", status, body)
            refresh = pick()
        end
    else
        if status == 200 and body:find("PRODSQL01", 1, true) then
            api_ok = api_ok + 1
        elseif status == 401 and body:find("invalid_token", 1, true) then
            if os.time() >= access_until then
                api_refused_expired = api_refused_expired + 1
            elseif not in_pool(refresh) then
                api_refused_deleted = api_refused_deleted + 1
            else
                api_refused_evicted = api_refused_evicted + 1
            end
            -- Exchange again at the next request, as a script does.
            access = nil
        else
            odd("api", status, body)
        end
    end
end

function done(summary, latency, requests)
    local total = {}
    for _, name in ipairs(names) do total[name] = 0 end
    for _, t in ipairs(threads) do
        for _, name in ipairs(names) do
            total[name] = total[name] + (t:get(name) or 0)
        end
    end
    local e = summary.errors
    local f = io.open(counts_file, "w")
    for _, name in ipairs(names) do
        f:write(string.format("%s %d\n", name, total[name]))
    end
    f:write(string.format("requests %d\n", summary.requests))
    f:write(string.format("socket_errors %d\n", e.connect + e.read + e.write + e.timeout))
    f:write(string.format("p99_ms %.2f\n", latency:percentile(99) / 1000))
    f:close()
end
