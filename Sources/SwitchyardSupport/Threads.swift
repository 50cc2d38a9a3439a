/// Starts a thread of its own running `body` (a kernel worker, a stream, a scheduler: work that
/// must not block Swift concurrency's few threads) and returns it for joining.
public func startThread(_ what: String, _ body: @escaping () -> Void) -> pthread_t {
    final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
    var thread = pthread_t()
    let context = Unmanaged.passRetained(Box(body))
    let result = pthread_create(&thread, nil, { raw in
        Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, context.toOpaque())
    precondition(result == 0, "cannot start \(what) thread: error \(result)")
    return thread
}
