-- wrk script: every request is a token exchange (form body, DPA's path).
wrk.method = "POST"
wrk.path = "/iwc/api/security/oauth/token"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "grant_type=refresh_token&refresh_token=" .. os.getenv("REFRESH_TOKEN")

done = function(summary, latency, requests)
    local errors = summary.errors.status + summary.errors.connect + summary.errors.read
        + summary.errors.write + summary.errors.timeout
    io.write(string.format("EXCHANGE_ERRORS %d\n", errors))
end
