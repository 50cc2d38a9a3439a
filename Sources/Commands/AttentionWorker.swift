import ArgumentParser
import AttentionWorker
import Kernels
import RemoteAttention
import Runtime
import SwitchyardJSON
import SwitchyardSupport

/// `switchyard attention-worker`: the second tier of two-tier inference.
struct AttentionWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention-worker",
        abstract: "Hold KV caches and compute attention for a tier-1 process (`--attention-workers`).",
        discussion: """
            Prints one line, SWITCHYARD_LISTENING {"address":"HOST:PORT","pid":N,"epoch":"...","kv_memory":BYTES}, once it \
            listens. Exits when its parent process ends, when its standard input (a pipe or socket) closes, or on SIGTERM or \
            SIGINT (status 0); a fatal error exits with status 1. It never detaches from its parent.
            """)

    @Option(help: "Address to listen on, HOST:PORT (port 0: a free one).")
    var listen = "127.0.0.1:0"

    @Option(name: .customLong("kv-memory"), help: "KV cache memory for all sequences together, e.g. 4GiB.")
    var kvMemory: String

    @Option(name: .customLong("kv-dtype"), help: ArgumentHelp(
        "How cached keys and values are stored: f32, bf16 or int8.",
        discussion: "f32: results equal attention on tier 1. bf16: half the memory, values rounded to bf16. int8: a float32 scale per 16 values, under a third of the memory; needs a head width that is a multiple of 16."))
    var kvDtype: KVElement = .f32

    @Option(name: [.short, .long], help: "Kernel threads (default: the cores this process may use).")
    var threads: Int?


    func validate() throws {
        try checkRange(threads, "--threads", 1...1024)
    }

    func run() throws {
        try reportingErrors {
            let budget = try parseByteSize(kvMemory)
            guard budget > 0 else { throw InputError("--kv-memory must be more than 0 bytes") }
            let address = try listenAddress(listen)
            exitWithParent()

            let pool = threads.map { ThreadPool(threads: $0) } ?? .shared
            let server = AttentionServer(service: AttentionService(budget: budget, pool: pool, element: kvDtype))
            let bound: (host: String, port: Int)
            do { bound = try server.start(host: address.host, port: address.port) } catch {
                throw InputError("cannot listen on \(listen): \(error)")
            }
            var line = JSONObject()
            line["address"] = .string(WorkerAddress(host: bound.host, port: bound.port).description)
            line["pid"] = .int(Int(getpid()))
            line["epoch"] = .string(server.service.status.epochHex)
            line["kv_memory"] = .int(budget)
            line["kv_dtype"] = .string(kvDtype.rawValue)
            writeOut("SWITCHYARD_LISTENING " + JSONValue.object(line).serialized() + "\n")
            try server.wait()
        }
    }
}

/// `--listen HOST:PORT` (port 0: a free one).
func listenAddress(_ listen: String) throws -> WorkerAddress {
    if listen.hasSuffix(":0") { return WorkerAddress(host: String(listen.dropLast(2)).trimmed("[]"), port: 0) }
    do { return try WorkerAddress(parsing: listen) } catch { throw InputError("--listen: \(error)") }
}

/// Ends the process, with status 0, when what started it goes away: its parent (it is
/// re-parented), standard input when that is a pipe or socket (closed), or SIGTERM/SIGINT. Its
/// caches go with it either way; tier 1 computes them again elsewhere.
func exitWithParent() {
    signal(SIGTERM) { _ in _exit(0) }
    signal(SIGINT) { _ in _exit(0) }
    let parent = getppid()
    _ = startThread("parent watch") {
        while getppid() == parent { usleep(100_000) }
        _exit(0)
    }
    var info = stat()
    if fstat(0, &info) == 0, (info.st_mode & S_IFMT) == S_IFIFO || (info.st_mode & S_IFMT) == S_IFSOCK {
        _ = startThread("stdin watch") {
            var byte: UInt8 = 0
            while true {
                let n = read(0, &byte, 1)
                if n == 0 || (n < 0 && errno != EINTR) { _exit(0) }
            }
        }
    }
}

/// `switchyard attention-status`: the health check of an attention worker.
struct AttentionStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention-status",
        abstract: "Ask an attention worker for its status (a health check): prints JSON, exits 1 when it does not answer.")

    @Argument(help: "The worker's HOST:PORT.")
    var address: String

    @Option(help: "Seconds to wait for the answer.")
    var timeout: Double = 5

    func validate() throws {
        guard timeout.isFinite, timeout > 0, timeout <= 3600 else { throw ValidationError("--timeout must be between 0 and 3600 seconds") }
    }

    func run() throws {
        try reportingErrors {
            do throws(LinkFailure) {
                let deadline = Duration.milliseconds(Int64(timeout * 1000))
                let link = try WorkerLink(try WorkerAddress(parsing: address), layout: nil, deadline: deadline, connectTimeout: deadline)
                let s = link.status
                link.close()
                var o = JSONObject()
                o["address"] = .string(address)
                o["epoch"] = .string(s.epochHex)
                o["kv_memory"] = .int(s.budget)
                o["kv_in_use"] = .int(s.inUse)
                o["sequences"] = .int(s.sequences)
                o["connections"] = .int(s.connections)
                writeOut(JSONValue.object(o).serialized() + "\n")
            } catch {
                throw InputError(error.description)
            }
        }
    }
}

extension KVElement: ExpressibleByArgument {}
