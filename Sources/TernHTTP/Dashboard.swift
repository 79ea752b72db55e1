// The dashboard (issue 20): one server-rendered page at /dashboard, no
// build step and no external asset (styles and the small script are in the
// page; it works offline). Login with an API token of scope read or more
// (kept in an HttpOnly, SameSite=Strict cookie). It shows the queue by
// state and age, the top destinations with their health and pacing, a live
// delivery rate (the page asks /dashboard/rate every 5 s), the last
// failures, and a history search by recipient or queue id. A narrow screen
// gets one column; a wide one a grid.

import Foundation
import Hummingbird
import TernMessage
import TernMetrics
import TernStore

extension HTTPServer {
    func addDashboardRoutes(to router: Router<TernRequestContext>) {
        router.get("/dashboard") { request, _ in
            guard case .granted = self.authorize(request, needs: .read) else { return Dashboard.login(error: nil) }
            return self.dashboard(search: request.uri.queryParameters["q"].map(String.init))
        }
        router.post("/dashboard/login") { request, _ in
            var request = request
            let form = (try? await request.collectBody(upTo: 8192)).map { String(buffer: $0) } ?? ""
            let token = Dashboard.formValue(form, "token") ?? ""
            guard case .granted = self.authorize(token: token, needs: .read) else {
                return Dashboard.login(error: "That token is not valid (or its scope is not read or admin).")
            }
            var cookie = "\(HTTPServer.cookieName)=\(token); Path=/; HttpOnly; SameSite=Strict; Max-Age=43200"
            if self.api.tls != nil { cookie += "; Secure" }
            return Response(status: .seeOther, headers: [.location: "/dashboard", .setCookie: cookie])
        }
        router.post("/dashboard/logout") { _, _ in
            Response(status: .seeOther, headers: [.location: "/dashboard", .setCookie: "\(HTTPServer.cookieName)=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"])
        }
        router.get("/dashboard/rate") { request, _ in
            if case .refused(let r) = self.authorize(request, needs: .read, json: true) { return r }
            let t = TernMetrics.totals()
            let live = (try? self.store.liveCounts()) ?? [:]
            return HTTPServer.json(.object([
                ("at", .int64(nowMillis())), (EventKind.received.rawValue, .int(t.received)), (EventKind.delivered.rawValue, .int(t.delivered)),
                (EventKind.deferred.rawValue, .int(t.deferred)), ("failed", .int(t.failed)), (RecipientState.queued.rawValue, .int(live[.queued] ?? 0)),
                ("deferred_now", .int(live[.deferred] ?? 0)),
            ]))
        }
    }

    func dashboard(search: String?) -> Response {
        let now = nowMillis()
        var page = Dashboard.Page()
        do {
            let live = try store.liveCounts()
            let shape = try store.queueShape(now: now, limit: 10)
            let all = try store.queueShape(now: now, limit: Int.max / 2)
            let (domains, _) = try store.routeStats(TimeWindow(since: now - 86_400_000, until: now + 1), now: now, limit: 10)
            let cooling = try store.coolingHosts(now: now)
            let shaping = try store.shapingStates().filter { $0.mode != "normal" || $0.factor < 1 }
            let failures = try store.recentFailures(limit: 15)
            page.queue(live: live, byAge: all, topWaiting: shape)
            page.rate()
            page.destinations(domains, cooling: cooling, shaping: shaping, now: now)
            page.failures(failures)
            var found: [HistoryEntry]? = nil
            if let q = search?.trimmingCharacters(in: .whitespaces), !q.isEmpty {
                var f = HistoryFilter()
                if q.contains("@") { f.recipient = q } else { f.queueID = q }
                f.limit = 50
                found = try store.history(f)
            }
            page.search(search ?? "", found)
        } catch {
            logger.error("dashboard: cannot read the database", metadata: ["error": "\(error)"])
            page.section("Error", "<p class=bad>The database could not be read: \(Dashboard.escape("\(error)"))</p>")
        }
        return Dashboard.html(page.body)
    }
}

enum Dashboard {
    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.count)
        for ch in s.unicodeScalars {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(ch)
            }
        }
        return out
    }

    /// A value of an application/x-www-form-urlencoded body.
    static func formValue(_ form: String, _ name: String) -> String? {
        for pair in form.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, kv[0] == name else { continue }
            return String(kv[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding
        }
        return nil
    }

    static func time(_ ms: Int64?) -> String { ms.map { RFC5322Date.timestamp(millis: $0) } ?? "" }

    static func percent(_ d: Double?) -> String { d.map { String(format: "%.1f %%", $0 * 100) } ?? "–" }

    static func table(_ header: [String], _ rows: [[String]], empty: String = "none") -> String {
        guard !rows.isEmpty else { return "<p class=muted>\(escape(empty))</p>" }
        var out = "<div class=scroll><table><thead><tr>" + header.map { "<th>\(escape($0))</th>" }.joined() + "</tr></thead><tbody>"
        for r in rows { out += "<tr>" + r.map { "<td>\($0)</td>" }.joined() + "</tr>" }
        return out + "</tbody></table></div>"
    }

    struct Page {
        var body = ""

        mutating func section(_ title: String, _ html: String, id: String? = nil, wide: Bool = false) {
            body += "<section\(id.map { " id=\($0)" } ?? "")\(wide ? " class=wide" : "")><h2>\(escape(title))</h2>\(html)</section>\n"
        }

        mutating func queue(live: [RecipientState: Int], byAge: [QueueShapeRow], topWaiting: [QueueShapeRow]) {
            var html = "<div class=cards>"
            for state in [RecipientState.queued, .inflight, .deferred, .held] {
                html += "<div class=card><b data-state=\(state.rawValue)>\(live[state] ?? 0)</b><span>\(state.rawValue)</span></div>"
            }
            html += "</div><h3>Waiting, by age</h3>"
            let buckets = QueueShapeRow.bucketNames.indices.map { i in byAge.reduce(0) { $0 + $1.buckets[i] } }
            let top = max(1, buckets.max() ?? 1)
            html += "<div class=bars>"
            for (name, n) in zip(QueueShapeRow.bucketNames, buckets) {
                html += "<div class=bar><span class=label>\(escape(name))</span><span class=fill style=\"width:\(n * 100 / top)%\"></span><span class=n>\(n)</span></div>"
            }
            html += "</div><h3>Waiting, by domain</h3>"
            html += Dashboard.table(["Domain", "Total"] + QueueShapeRow.bucketNames, topWaiting.map { r in
                [escape(r.domain), String(r.total)] + r.buckets.map(String.init)
            }, empty: "nothing waits")
            section("Queue", html, id: "queue")
        }

        mutating func rate() {
            section("Delivery rate", """
                <p><b id=rate>–</b> delivered per second now · <span id=rate-in>–</span> received/s · <span id=rate-def>–</span> deferred/s</p>
                <svg id=spark viewBox="0 0 300 60" preserveAspectRatio=none role=img aria-label="delivered per second, last 5 minutes"></svg>
                <p class=muted>Updated every 5 s from this server's counters (since it started).</p>
                """, id: "live")
        }

        mutating func destinations(_ domains: [DomainStats], cooling: [StoredHostHealth], shaping: [StoredShapingState], now: Int64) {
            var html = Dashboard.table(["Domain", "Recipients", "Delivered", "Deferral", "Waiting", "Median s", "MX", "Top deferral"], domains.map { d in
                [escape(d.domain), String(d.recipients), percent(d.deliveryRate), percent(d.deferralRate), String(d.waiting),
                 d.medianSeconds.map { String(format: "%.1f", $0) } ?? "–", escape(d.mxHosts.first ?? ""), escape(d.topDeferral ?? "")]
            }, empty: "no mail in the last 24 hours")
            html += "<h3>Paced or throttled now</h3>"
            html += Dashboard.table(["Destination", "Source", "State", "Rate", "Until", "Reason"], shaping.map { s in
                [escape(s.destination), escape(s.source.isEmpty ? "–" : s.source), "<span class=warn>\(escape(s.mode))</span>",
                 String(format: "%.0f %%", s.factor * 100), time(s.suspendedUntil ?? s.holdUntil), escape(s.reason ?? "")]
            }, empty: "no destination is throttled")
            html += "<h3>MX hosts cooling down</h3>"
            html += Dashboard.table(["Host", "Failures in a row", "Until", "Last error"], cooling.map { c in
                [escape(c.host), String(c.failures), time(c.cooldownUntil), escape(c.lastError ?? "")]
            }, empty: "none")
            section("Top destinations (24 h)", html, id: "destinations", wide: true)
        }

        mutating func failures(_ f: [RecentFailure]) {
            section("Last failures", Dashboard.table(["At (UTC)", "Recipient", "Outcome", "Reply", "Category", "Queue id"], f.map { a in
                [time(a.at), escape(a.recipient), "<span class=\(a.outcome == AttemptOutcome.bounced.rawValue ? "bad" : "warn")>\(escape(a.outcome))</span>",
                 escape([a.code.map(String.init), a.enhanced, a.text].compactMap { $0 }.joined(separator: " ")), escape(a.category ?? ""),
                 "<a href=\"/dashboard?q=\(escape(a.queueID))#search\">\(escape(a.queueID))</a>"]
            }, empty: "no failed attempt recently"), id: "failures", wide: true)
        }

        mutating func search(_ q: String, _ found: [HistoryEntry]?) {
            var html = """
                <form method=get action="/dashboard#search" class=search><input name=q type=search value="\(escape(q))" \
                placeholder="recipient address or queue id" aria-label="recipient address or queue id"><button>Search</button></form>
                """
            if let found {
                html += "<p class=muted>\(found.count) recipient\(found.count == 1 ? "" : "s")</p>"
                for e in found {
                    html += "<details open><summary>\(escape(e.queueID)) · &lt;\(escape(e.sender))&gt; → &lt;\(escape(e.recipient))&gt; · <b>\(escape(e.state.rawValue))</b>, \(e.attempts) attempt\(e.attempts == 1 ? "" : "s")</summary>"
                    html += Dashboard.table(["At (UTC)", "Step", "Host", "Reply"], e.timeline.map { t in
                        [time(t.at), escape(t.kind.description), escape(t.mxHost ?? ""),
                         escape([t.code.map(String.init), t.enhanced, t.text].compactMap { $0 }.joined(separator: " "))]
                    })
                    html += "</details>"
                }
            }
            section("History", html, id: "search", wide: true)
        }
    }

    static func html(_ body: String, status: HTTPResponse.Status = .ok, loggedIn: Bool = true) -> Response {
        let nav = loggedIn ? "<form method=post action=/dashboard/logout><button class=link>Log out</button></form>" : ""
        let page = """
            <!doctype html>
            <html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
            <title>Tern</title><link rel=icon href="data:,"><style>\(style)</style></head>
            <body><header><h1>Tern</h1><nav>\(nav)</nav></header><main>
            \(body)
            </main>\(loggedIn ? "<script>\(script)</script>" : "")</body></html>
            """
        return Response(status: status, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                                                  .init("Content-Security-Policy")!: "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; img-src 'self' data:"],
                        body: .init(byteBuffer: ByteBuffer(string: page)))
    }

    static func login(error: String?) -> Response {
        html("""
            <section class=login><h2>Log in</h2>
            \(error.map { "<p class=bad>\(escape($0))</p>" } ?? "")
            <form method=post action=/dashboard/login><label>API token (scope read or admin; <code>tern api token add NAME</code>)
            <input name=token type=password autocomplete=off required></label><button>Log in</button></form></section>
            """, status: error == nil ? .ok : .unauthorized, loggedIn: false)
    }

    static let style = """
        :root{color-scheme:light dark;--bg:#f6f7f9;--fg:#1b1f24;--card:#fff;--muted:#667085;--line:#d0d5dd;--accent:#2563eb;--warn:#b54708;--bad:#b42318}
        @media (prefers-color-scheme:dark){:root{--bg:#111418;--fg:#e6e8eb;--card:#1a1f25;--muted:#98a2b3;--line:#344054;--accent:#60a5fa;--warn:#fdb022;--bad:#f97066}}
        *{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,sans-serif;background:var(--bg);color:var(--fg)}
        header{display:flex;justify-content:space-between;align-items:center;padding:.6rem 1rem;border-bottom:1px solid var(--line);background:var(--card)}
        h1{font-size:1.2rem;margin:0}h2{font-size:1.05rem;margin:0 0 .6rem}h3{font-size:.95rem;margin:1rem 0 .4rem;color:var(--muted)}
        main{display:grid;gap:1rem;padding:1rem;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr))}
        section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:1rem;min-width:0}section.wide{grid-column:1/-1}
        .cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(90px,1fr));gap:.5rem}
        .card{border:1px solid var(--line);border-radius:6px;padding:.5rem;text-align:center}.card b{display:block;font-size:1.5rem}.card span{color:var(--muted)}
        .bar{display:grid;grid-template-columns:5rem 1fr 4rem;align-items:center;gap:.5rem;margin:.15rem 0}
        .fill{display:block;height:.8rem;background:var(--accent);border-radius:3px;min-width:1px}.n{text-align:right}
        .scroll{overflow-x:auto}table{border-collapse:collapse;min-width:100%;width:max-content}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
        th{font-weight:600;color:var(--muted);white-space:nowrap}td{overflow-wrap:anywhere;max-width:40ch}td:first-child{white-space:nowrap}
        .muted{color:var(--muted)}.warn{color:var(--warn)}.bad{color:var(--bad)}
        svg{width:100%;height:60px;background:var(--bg);border-radius:4px}svg rect{fill:var(--accent)}
        form.search{display:flex;gap:.5rem}input{flex:1;font:inherit;padding:.45rem;border:1px solid var(--line);border-radius:6px;background:var(--bg);color:var(--fg);min-width:0}
        button{font:inherit;padding:.45rem .9rem;border:0;border-radius:6px;background:var(--accent);color:#fff;cursor:pointer}button.link{background:none;color:var(--accent)}
        .login{max-width:28rem;margin:2rem auto;grid-column:1/-1}.login label{display:grid;gap:.4rem;margin-bottom:.6rem}
        details{margin:.5rem 0}summary{cursor:pointer;overflow-wrap:anywhere}
        """

    /// Polls /dashboard/rate every 5 s; draws delivered/s over the last 5 minutes.
    static let script = """
        (function(){
          var last=null, points=[];
          function draw(){
            var svg=document.getElementById('spark'); if(!svg) return;
            var max=1; points.forEach(function(p){ if(p>max) max=p; });
            var w=300/60, ns='http://www.w3.org/2000/svg';
            while(svg.firstChild) svg.removeChild(svg.firstChild);
            points.forEach(function(p,i){
              var h=Math.max(1,p/max*58), r=document.createElementNS(ns,'rect');
              r.setAttribute('x',(i*w).toFixed(1)); r.setAttribute('y',(60-h).toFixed(1));
              r.setAttribute('width',(w-0.5).toFixed(1)); r.setAttribute('height',h.toFixed(1));
              svg.appendChild(r);
            });
          }
          function update(d){
            if(!d) return;
            if(last && d.at>last.at){
              var s=(d.at-last.at)/1000, rate=(d.delivered-last.delivered)/s;
              document.getElementById('rate').textContent=rate.toFixed(1);
              document.getElementById('rate-in').textContent=((d.received-last.received)/s).toFixed(1);
              document.getElementById('rate-def').textContent=((d.deferred-last.deferred)/s).toFixed(1);
              points.push(rate); if(points.length>60) points.shift(); draw();
            }
            last=d;
          }
          function tick(){
            // A failed request (the server restarting) only skips a tick; a fault in update is not hidden.
            fetch('/dashboard/rate',{credentials:'same-origin'}).then(function(r){ return r.ok?r.json():null; }, function(){ return null; }).then(update);
          }
          tick(); setInterval(tick,5000);
        })();
        """
}
