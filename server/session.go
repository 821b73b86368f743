package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// session is one client's JSON-RPC conversation with the gateway, whatever
// carries it: a /ws connection, one /rpc request, a gRPC Session stream.
// It owns everything about the client's calls that must not differ from
// face to face: the ids in flight (a duplicate is refused), the
// per-client in-flight cap, batches (bounded, and no goroutine per
// element), the method rules (see checkMethod), subscriptions (owned
// through the client's bridge.Consumer and released when it leaves), the
// gateway's own methods, the slow-consumer policy, which outcomes get a
// reply, and counting. A face is an adapter: it reads requests from its
// transport into serve or serveMessage, and gives the session an out for
// what goes back.
//
// Calls run on the bridge's goroutines (bridge.Bridge.Go): a call in
// flight costs map entries, not a goroutine. Only notifications the client
// sends are forwarded on goroutines of their own (tracked by notifying,
// bounded by the same cap).
type session struct {
	// Static after newSession.
	s        *Server
	face     face
	out      sessionOut
	notes    *notifications   // the client's notifications; nil when the face cannot push them
	consumer *bridge.Consumer // notes' consumer, through which the client's calls go; nil without notes
	client   *client          // the connection whose per-client limits apply
	// ctx ends when the client has gone (close): notifications being
	// forwarded are abandoned.
	ctx    context.Context
	cancel context.CancelFunc

	slowOnce  sync.Once
	notifying sync.WaitGroup // goroutines forwarding the client's notifications

	mu sync.Mutex
	// Guarded by mu.
	inflight   map[string]func() // calls in flight by jsonrpc.IDKey of their id, with their cancel (nil until known); nil before the first call
	notifies   int               // notifications being forwarded
	unanswered int               // calls and batches whose reply is not handed to out yet
	idle       chan struct{}     // closed when unanswered drops to 0, for wait and close
	goingAway  bool              // shutdown: leave once nothing is unanswered
	leaving    bool              // out.leave was called: no call starts any more
	closed     bool              // the client has gone: no call starts any more
	cancelling bool              // cancelAll has run: a call's cancel is called as soon as it is known
	inBytes    int64             // the client's bytes held: requests in flight (requestBytes), and what the face holds to write (charge)
	room       chan struct{}     // closed when inBytes drops below the budget, for waitForRoom; nil when nobody waits
}

// sessionOut is a face's side of a session: where replies and
// notifications go. Its methods are called by the session's reader and by
// the bridge's goroutines, never with the session's lock held; none may
// block.
type sessionOut interface {
	// reply hands over the replies due: one (batch false) or a batch's.
	// It reports false when the client's buffer is full.
	reply(batch bool, replies []reply) bool
	// notify hands over a notification; false when the buffer is full.
	notify(method string, params json.RawMessage) bool
	// leave ends the conversation once what was handed over is written
	// (shutdown: 1001, or UNAVAILABLE with reason draining).
	leave()
	// endSlow ends the conversation at once: the client does not keep up.
	endSlow(reason string)
}

// reply is the outcome of one call as its client gets it.
type reply struct {
	id     json.RawMessage // the client's id, byte for byte (a JSON string for Session)
	result json.RawMessage
	err    error
}

// newSession starts a session for a client of face f. With push, the
// client receives notifications (the face can push them) and may
// subscribe; out.notify then receives them. ctx is the client's lifetime
// (the session's own ends at close).
func (s *Server) newSession(ctx context.Context, f face, out sessionOut, push bool) *session {
	ss := &session{s: s, face: f, out: out, client: clientOf(ctx)}
	ss.ctx, ss.cancel = context.WithCancel(ctx)
	if push {
		// Losses and gaps reach a session's client as notifications.
		ss.notes = s.newNotifications(ss.ctx, noteFace{
			push: out.notify,
			slow: func() { ss.slow("send buffer full: client too slow") },
		})
		ss.consumer = ss.notes.consumer
	}
	return ss
}

// The errors a session answers with itself.
var (
	errDuplicateID = &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest, Message: "invalid request: a call with this id is still in flight"}
	errGoingAway   = &bridge.Error{Code: bridge.CodeDraining, Message: "gateway is shutting down"}
)

// serveMessage serves one message of a JSON-RPC face: a request, a
// notification or a batch.
func (ss *session) serveMessage(data []byte) {
	reqs, batch := jsonrpc.ParseRequests(data)
	ss.serve(reqs, batch, bridge.CallOptions{})
}

// serve serves requests: one (batch false) or a batch, each call with co.
// It returns without waiting for the calls.
func (ss *session) serve(reqs []jsonrpc.Request, batch bool, co bridge.CallOptions) {
	if !batch {
		r := reqs[0]
		switch {
		case r.Err != nil:
			ss.refused(r, r.Err)
		case r.IsNotification():
			ss.forward(r)
		default:
			ss.hold()
			ss.call(r, co, func(rep reply, release func()) {
				if replyDue(rep.err) && !ss.out.reply(false, []reply{rep}) {
					ss.slow("send buffer full: client too slow")
				}
				release()
				ss.answered()
			})
		}
		return
	}
	if max := ss.s.opts.MaxBatch; len(reqs) > max {
		// One error for the whole batch, as for an empty one: none of it
		// runs.
		ss.refused(jsonrpc.Request{}, &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest,
			Message: fmt.Sprintf("invalid request: a batch of %d exceeds the limit of %d", len(reqs), max)})
		return
	}
	b := &batchReplies{ss: ss, waiting: 1} // 1: serve is still starting calls
	ss.hold()                              // the batch's reply
	for _, r := range reqs {
		switch {
		case r.Err != nil:
			b.refused(ss.refusal(r, r.Err))
		case r.IsNotification():
			ss.forward(r)
		default:
			b.started()
			ss.call(r, co, b.ended)
		}
	}
	b.ended(reply{}, nil)
}

// batchReplies gathers a batch's replies, in the order they complete,
// and hands them over together once the last call has ended.
type batchReplies struct {
	ss *session

	mu sync.Mutex
	// Guarded by mu.
	waiting  int // calls not ended, plus one while serve starts them
	replies  []reply
	releases []func()
}

func (b *batchReplies) started() {
	b.mu.Lock()
	b.waiting++
	b.mu.Unlock()
}

// refused adds the reply to an element refused before any call started.
func (b *batchReplies) refused(rep reply) {
	b.mu.Lock()
	b.replies = append(b.replies, rep)
	b.mu.Unlock()
}

// ended takes a call's outcome (release nil: serve has started every
// call); the last one hands the batch's replies over.
func (b *batchReplies) ended(rep reply, release func()) {
	b.mu.Lock()
	if release != nil {
		if replyDue(rep.err) {
			b.replies = append(b.replies, rep)
		}
		b.releases = append(b.releases, release)
	}
	b.waiting--
	last := b.waiting == 0
	b.mu.Unlock()
	if !last {
		return
	}
	ss := b.ss
	if len(b.replies) > 0 && !ss.out.reply(true, b.replies) {
		ss.slow("send buffer full: client too slow")
	}
	for _, release := range b.releases {
		release()
	}
	ss.answered()
}

// call starts one call; done gets its reply and the release of the
// notifications held back until the reply is handed over (see
// bridge.Consumer.CallHeld), exactly once, possibly before call returns.
func (ss *session) call(r jsonrpc.Request, co bridge.CallOptions, done func(reply, func())) {
	obs := ss.s.observe(ss.ctx, ss.face, r.Method, len(r.Params), &co, ss)
	finish := func(res json.RawMessage, release func(), err error) {
		obs.done(len(res), err)
		done(reply{id: r.ID, result: res, err: err}, release)
	}
	key := jsonrpc.IDKey(r.ID)
	size := requestBytes(r)
	if err := ss.claim(key, size); err != nil {
		finish(nil, noRelease, err)
		return
	}
	cancel := ss.dispatch(r.Method, r.Params, co, func(res json.RawMessage, release func(), err error) {
		ss.unclaim(key, size) // before the reply leaves: the client may reuse the id once it has it
		finish(res, release, err)
	})
	ss.setCancel(key, cancel)
}

// dispatch runs one call by the rules every face shares, and calls done
// with its outcome exactly once (possibly before it returns). cancel gives
// up on the call.
func (ss *session) dispatch(method string, params json.RawMessage, co bridge.CallOptions, done func(json.RawMessage, func(), error)) (cancel func()) {
	if err := ss.s.checkMethod(method, ss.consumer != nil, false); err != nil {
		done(nil, noRelease, err)
		return noCancel
	}
	if method == methodListen || method == methodUnlisten {
		res, err := ss.listen(method, params)
		done(res, noRelease, err)
		return noCancel
	}
	if ss.consumer != nil {
		return ss.consumer.Go(method, params, co, done)
	}
	return ss.s.bridge.Go(method, params, co, func(res json.RawMessage, err error) { done(res, noRelease, err) })
}

func noRelease() {}
func noCancel()  {}

// Gateway-local JSON-RPC methods of the faces that push (/ws, Session):
// they change which backend notifications the client receives by method
// and never reach the backend. Params: ["tick", ...] or
// {"methods": ["tick", ...]}; "*" is every method.
const (
	methodListen   = "wsbridge_subscribe"
	methodUnlisten = "wsbridge_unsubscribe"
	gatewayPrefix  = "wsbridge_" // reserved for the gateway's own methods
)

func (ss *session) listen(method string, params json.RawMessage) (json.RawMessage, error) {
	methods, ok := listenParams(params)
	if !ok {
		return nil, invalid("%s takes a list of notification methods", method)
	}
	if method == methodUnlisten {
		ss.consumer.Unlisten(methods...)
		return json.RawMessage("true"), nil
	}
	if err := ss.notes.listen(methods); err != nil {
		return nil, err
	}
	return json.RawMessage("true"), nil
}

func listenParams(params json.RawMessage) ([]string, bool) {
	var list []string
	if json.Unmarshal(params, &list) == nil && len(list) > 0 {
		return list, true
	}
	var obj struct {
		Methods []string `json:"methods"`
	}
	if json.Unmarshal(params, &obj) == nil && len(obj.Methods) > 0 {
		return obj.Methods, true
	}
	return nil, false
}

// checkMethod applies the rules every face shares before a method goes
// anywhere: the gateway's own methods follow the allow and deny lists like
// any other; they (wsbridge_*) and the methods that
// make or end a backend subscription are served only to a client that can
// receive notifications (push), and never as notifications, since a
// subscription made that way could not be routed and an unsubscribe could
// end another client's subscription.
func (s *Server) checkMethod(method string, push, notification bool) error {
	local := method == methodListen || method == methodUnlisten
	switch {
	case local && !s.bridge.MethodAllowed(method):
		return &bridge.Error{Code: bridge.CodePermissionDenied, Message: "method not allowed"}
	case strings.HasPrefix(method, gatewayPrefix) && !local:
		return &bridge.Error{Code: bridge.CodeUnsupported, Message: fmt.Sprintf("%s: no such gateway method (the gateway's own are %s and %s)", method, methodListen, methodUnlisten)}
	case !local && !s.bridge.IsSubscriptionMethod(method):
		return nil
	case !push:
		return &bridge.Error{Code: bridge.CodeUnsupported, Message: fmt.Sprintf(
			"%s needs a connection that can push notifications: use the /ws endpoint or the gRPC BridgeService.Session (BridgeService.Subscribe and GET /v1/subscribe stream notifications by method)", method)}
	case notification:
		return &bridge.Error{Code: bridge.CodeUnsupported, Message: fmt.Sprintf("%s cannot be sent as a notification: send it with an id", method)}
	}
	return nil
}

// forward sends a client's notification to the backend. It counts against
// the client's in-flight cap while it is being written; one that cannot be
// sent is counted and logged, since a notification gets no reply.
func (ss *session) forward(r jsonrpc.Request) {
	s := ss.s
	obs := s.observe(ss.ctx, ss.face, r.Method, len(r.Params), nil, nil)
	err := s.checkMethod(r.Method, ss.consumer != nil, true)
	size := requestBytes(r)
	if err == nil {
		err = ss.claimNotify(size)
	}
	if err != nil {
		obs.done(0, err)
		s.log.Debug("client notification not forwarded", "err", err)
		return
	}
	go func() {
		defer ss.notifying.Done()
		err := s.bridge.Notify(ss.ctx, r.Method, r.Params, bridge.CallOptions{})
		obs.done(0, err)
		if err != nil {
			s.log.Debug("client notification not forwarded", "err", err)
		}
		ss.mu.Lock()
		ss.notifies--
		ss.refundLocked(size)
		ss.mu.Unlock()
		s.release(ss.client)
	}()
}

// refused answers a request the session refuses without a call (invalid,
// over a limit): counted, and replied to.
func (ss *session) refused(r jsonrpc.Request, err error) {
	rep := ss.refusal(r, err)
	if !ss.out.reply(false, []reply{rep}) {
		ss.slow("send buffer full: client too slow")
	}
}

// refusal counts a refused request and returns its reply.
func (ss *session) refusal(r jsonrpc.Request, err error) reply {
	ss.s.observeRefusal(ss.ctx, ss.face, r.Method, err)
	return reply{id: r.ID, err: err}
}

// claim registers a call id as in flight, or returns why it cannot be: the
// client is leaving, the id is already in flight, or the client is at its
// in-flight limit.
func (ss *session) claim(key string, size int64) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.leaving || ss.closed {
		return errGoingAway
	}
	if _, dup := ss.inflight[key]; dup {
		return errDuplicateID
	}
	if err := ss.s.acquire(ss.client); err != nil {
		return err
	}
	if ss.inflight == nil {
		ss.inflight = map[string]func(){} // made on the first call: an idle client holds none
	}
	ss.inflight[key] = nil
	ss.inBytes += size
	return nil
}

// claimNotify counts a notification being forwarded, against the cap. Its
// goroutine is added to notifying under mu, so that close (which sets
// closed under mu, then waits) never races an Add.
func (ss *session) claimNotify(size int64) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.leaving || ss.closed {
		return errGoingAway
	}
	if err := ss.s.acquire(ss.client); err != nil {
		return err
	}
	ss.notifies++
	ss.inBytes += size
	ss.notifying.Add(1)
	return nil
}

// setCancel records how to cancel the call key, unless it has ended. A
// call started after cancelAll (it was claimed before) is cancelled now:
// close must not wait for a call nobody cancels.
func (ss *session) setCancel(key string, cancel func()) {
	ss.mu.Lock()
	f, ok := ss.inflight[key]
	record := ok && f == nil
	if record {
		ss.inflight[key] = cancel
	}
	late := record && ss.cancelling
	ss.mu.Unlock()
	if late {
		cancel()
	}
}

func (ss *session) unclaim(key string, size int64) {
	ss.mu.Lock()
	delete(ss.inflight, key)
	ss.refundLocked(size)
	ss.mu.Unlock()
	ss.s.release(ss.client)
}

// charge counts n bytes the face holds for the client (replies and
// notifications waiting to be written) against its byte budget;
// refund gives them back once written.
func (ss *session) charge(n int64) {
	ss.mu.Lock()
	ss.inBytes += n
	ss.mu.Unlock()
}

func (ss *session) refund(n int64) {
	ss.mu.Lock()
	ss.refundLocked(n)
	ss.mu.Unlock()
}

// requestBytes is what a request holds while it is in flight, for the
// client's byte budget: its message, and its frame to the backend.
func requestBytes(r jsonrpc.Request) int64 { return 2 * int64(len(r.ID)+len(r.Method)+len(r.Params)) }

// refundLocked gives back the bytes of a request that has ended, and wakes
// a reader waiting for room. ss.mu must be held.
func (ss *session) refundLocked(size int64) {
	ss.inBytes -= size
	if ss.room != nil && ss.inBytes < ss.s.opts.ClientBufferBytes {
		close(ss.room)
		ss.room = nil
	}
}

// waitForRoom is backpressure: the client's reader calls it before it
// reads the next message, and it waits while the client's bytes held (its
// requests in flight, and on /ws its replies and notifications not yet
// written) fill its byte budget (ClientBufferBytes), so that a client
// cannot make the gateway hold more than that by sending requests faster
// than it reads their replies: the transport's flow control (TCP, HTTP/2)
// holds the rest, and a client that does not read at all is ended as too
// slow by its writer. It reports false when done is closed first.
func (ss *session) waitForRoom(done <-chan struct{}) bool {
	for {
		ss.mu.Lock()
		if ss.inBytes < ss.s.opts.ClientBufferBytes || ss.closed {
			ss.mu.Unlock()
			return true
		}
		if ss.room == nil {
			ss.room = make(chan struct{})
		}
		room := ss.room
		ss.mu.Unlock()
		select {
		case <-room:
		case <-done:
			return false
		}
	}
}

// hold counts a reply that is due (a call's or a batch's).
func (ss *session) hold() {
	ss.mu.Lock()
	ss.unanswered++
	ss.mu.Unlock()
}

// othersDue reports whether replies are due besides one being handed
// over now (overlap: a face then lets replies meet and leave together).
func (ss *session) othersDue(handing int) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.unanswered > handing
}

// answered notes that a reply was handed over (or none was due), and
// leaves once nothing is unanswered when the session is going away.
func (ss *session) answered() {
	ss.mu.Lock()
	ss.unanswered--
	if ss.unanswered == 0 && ss.idle != nil {
		close(ss.idle)
		ss.idle = nil
	}
	ss.mu.Unlock()
	ss.leaveIfIdle()
}

// goAway ends the session as soon as its calls are answered (shutdown).
func (ss *session) goAway() {
	ss.mu.Lock()
	ss.goingAway = true
	ss.mu.Unlock()
	ss.leaveIfIdle()
}

// leaveIfIdle hands out.leave the end of the conversation, behind the
// replies already handed over, once the session is going away with
// nothing unanswered. From then on no call starts, so every call that got
// no reply before the end was never passed to the backend.
func (ss *session) leaveIfIdle() {
	ss.mu.Lock()
	leave := ss.goingAway && ss.unanswered == 0 && !ss.leaving && !ss.closed
	if leave {
		ss.leaving = true
	}
	ss.mu.Unlock()
	if leave {
		ss.out.leave()
	}
}

// wait returns once every reply due has been handed over and every
// notification forwarded, or ctx is done (then the calls are cancelled,
// and wait returns once they have ended). Only the goroutine that serves
// the client's messages may call it, between messages.
func (ss *session) wait(ctx context.Context) {
	idle := ss.idleChan()
	select {
	case <-idle:
	case <-ctx.Done():
		ss.cancelAll()
		<-idle
	}
	ss.notifying.Wait()
}

// idleChan returns a channel closed once nothing is unanswered.
func (ss *session) idleChan() <-chan struct{} {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.unanswered == 0 {
		done := make(chan struct{})
		close(done)
		return done
	}
	if ss.idle == nil {
		ss.idle = make(chan struct{})
	}
	return ss.idle
}

// close ends the session: the client has gone. No call starts any more,
// the calls in flight are cancelled, and close returns once they have all
// ended and the client's subscriptions are released. Nothing is handed to
// out after close returns.
func (ss *session) close() {
	ss.mu.Lock()
	ss.closed = true
	ss.mu.Unlock()
	ss.cancel()
	ss.cancelAll()
	<-ss.idleChan()
	ss.notifying.Wait()
	if ss.notes != nil {
		ss.notes.close()
	}
}

// cancelAll gives up on every call in flight, and on every call whose
// cancel is recorded later (see setCancel).
func (ss *session) cancelAll() {
	ss.mu.Lock()
	ss.cancelling = true
	cancels := make([]func(), 0, len(ss.inflight))
	for _, f := range ss.inflight {
		if f != nil {
			cancels = append(cancels, f)
		}
	}
	ss.mu.Unlock()
	for _, f := range cancels {
		f()
	}
}

// slow ends a client that cannot keep up, counting it once.
func (ss *session) slow(reason string) {
	ss.s.slowConsumer(&ss.slowOnce, func() { ss.out.endSlow(reason) })
}

// unary serves one call of a face without a session (gRPC Call, REST, a
// typed rpc) by the same rules: such a face cannot push, so subscriptions
// and the gateway's own methods are refused. convert turns the result into
// the face's reply; its failure is the call's, and counted as such.
func (s *Server) unary(ctx context.Context, f face, method string, params json.RawMessage, co bridge.CallOptions, convert func(json.RawMessage) error) error {
	obs := s.observe(ctx, f, method, len(params), &co, nil)
	err := s.checkMethod(method, false, false)
	if err == nil {
		err = s.acquire(clientOf(ctx))
	}
	var res json.RawMessage
	if err == nil {
		res, err = s.bridge.Call(ctx, method, params, co)
		s.release(clientOf(ctx))
		if err == nil {
			err = convert(res)
		}
	}
	obs.done(len(res), err)
	return err
}

// unaryNotify is unary for a notification.
func (s *Server) unaryNotify(ctx context.Context, f face, method string, params json.RawMessage, co bridge.CallOptions) error {
	obs := s.observe(ctx, f, method, len(params), &co, nil)
	err := s.checkMethod(method, false, true)
	if err == nil {
		err = s.acquire(clientOf(ctx))
	}
	if err == nil {
		err = s.bridge.Notify(ctx, method, params, co)
		s.release(clientOf(ctx))
	}
	obs.done(0, err)
	return err
}
