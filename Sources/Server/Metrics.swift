import Batching
import Synchronization
import SwitchyardSupport

/// Counters, gauges and histograms in Prometheus' text format.
final class Metrics: Sendable {
    static let latencyBuckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    struct Histogram {
        var counts = [Int](repeating: 0, count: Metrics.latencyBuckets.count)
        var sum = 0.0
        var total = 0
        mutating func observe(_ seconds: Double) {
            for (i, bound) in Metrics.latencyBuckets.enumerated() where seconds <= bound { counts[i] += 1 }
            sum += seconds
            total += 1
        }
    }

    struct State {
        var requests: [String: Int] = [:]   // "endpoint,status"
        var promptTokens = 0
        var completionTokens = 0
        var disconnects = 0
        var firstToken = Histogram()
        var interToken = Histogram()
        var recent: [(time: Double, tokens: Int)] = []
    }

    private let state = Mutex(State())

    func request(_ endpoint: String, status: Int) { state.withLock { $0.requests["\(endpoint),\(status)", default: 0] += 1 } }
    func disconnected() { state.withLock { $0.disconnects += 1 } }
    func firstToken(_ d: Duration) { state.withLock { $0.firstToken.observe((d).seconds) } }
    func interToken(_ d: Duration) { state.withLock { $0.interToken.observe((d).seconds) } }

    func tokens(prompt: Int, completion: Int) {
        let now = monotonic()
        state.withLock {
            $0.promptTokens += prompt
            $0.completionTokens += completion
            $0.recent.append((now, completion))
            $0.recent.removeAll { now - $0.time > 10 }
        }
    }

    func render(_ stats: BatchScheduler.Stats) -> String {
        let s = state.withLock { $0 }
        let now = monotonic()
        let recentTokens = s.recent.filter { now - $0.time <= 10 }.reduce(0) { $0 + $1.tokens }
        var out = ""
        out += "# HELP switchyard_requests_total Completion requests by endpoint and HTTP status.\n# TYPE switchyard_requests_total counter\n"
        for (key, n) in s.requests.sorted(by: { $0.key < $1.key }) {
            let parts = key.split(separator: ",")
            out += "switchyard_requests_total{endpoint=\"\(parts[0])\",status=\"\(parts[1])\"} \(n)\n"
        }
        func gauge(_ name: String, _ help: String, _ value: Double, type: String = "gauge") {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        gauge("switchyard_prompt_tokens_total", "Prompt tokens of finished requests.", Double(s.promptTokens), type: "counter")
        gauge("switchyard_completion_tokens_total", "Tokens generated for finished requests.", Double(s.completionTokens), type: "counter")
        gauge("switchyard_client_disconnects_total", "Streams whose client went away.", Double(s.disconnects), type: "counter")
        gauge("switchyard_tokens_per_second", "Generated tokens per second over the last 10 seconds.", Double(recentTokens) / 10)
        gauge("switchyard_queue_depth", "Requests waiting to start.", Double(stats.queued))
        gauge("switchyard_active_sequences", "Sequences running.", Double(stats.running))
        gauge("switchyard_kv_cache_bytes", "KV cache memory held by running sequences.", Double(stats.kvBytes))
        func histogram(_ name: String, _ help: String, _ h: Histogram) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
            for (bound, n) in zip(Metrics.latencyBuckets, h.counts) { out += "\(name)_bucket{le=\"\(bound)\"} \(n)\n" }
            out += "\(name)_bucket{le=\"+Inf\"} \(h.total)\n\(name)_sum \(h.sum)\n\(name)_count \(h.total)\n"
        }
        histogram("switchyard_time_to_first_token_seconds", "From request to first generated text.", s.firstToken)
        histogram("switchyard_inter_token_latency_seconds", "Between streamed pieces of text.", s.interToken)
        return out
    }


    private func monotonic() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }
}
