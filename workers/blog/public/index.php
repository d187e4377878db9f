<?php
// tqserver demo page: which PHP runs this, which worker process, and what the
// request looked like from PHP's side.
$server = $_SERVER;
$keys = ['REQUEST_METHOD', 'REQUEST_URI', 'SCRIPT_NAME', 'SCRIPT_FILENAME', 'PATH_INFO',
         'QUERY_STRING', 'DOCUMENT_ROOT', 'SERVER_SOFTWARE', 'SERVER_PROTOCOL',
         'REMOTE_ADDR', 'REMOTE_PORT', 'SERVER_ADDR', 'SERVER_PORT', 'HTTP_HOST', 'HTTP_USER_AGENT'];
$h = fn($v) => htmlspecialchars((string)$v, ENT_QUOTES);
?>
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>tqserver demo</title>
  <link rel="stylesheet" href="<?= $h(dirname($server['SCRIPT_NAME'])) ?>/assets/style.css">
</head>
<body>
  <header>
    <img src="<?= $h(dirname($server['SCRIPT_NAME'])) ?>/assets/logo.svg" alt="" width="48" height="48">
    <h1>tqserver</h1>
    <p>PHP served by a managed pool of php-cgi workers over kept-alive FastCGI.</p>
  </header>
  <section>
    <h2>This worker</h2>
    <table>
      <tr><th>PHP version</th><td><?= $h(PHP_VERSION) ?> (<?= $h(PHP_SAPI) ?>)</td></tr>
      <tr><th>Worker process</th><td>pid <?= getmypid() ?></td></tr>
      <tr><th>Memory</th><td><?= round(memory_get_usage() / 1024) ?> KiB in use, peak <?= round(memory_get_peak_usage() / 1024) ?> KiB</td></tr>
      <tr><th>OPcache</th><td><?= function_exists('opcache_get_status') && @opcache_get_status(false) ? 'enabled' : 'off' ?></td></tr>
      <tr><th>Served at</th><td><?= $h(date('Y-m-d H:i:s T')) ?></td></tr>
    </table>
    <p>Reload the page: the pid changes only when the pool scales, recycles a
    worker (<code>max_requests</code>) or replaces one that died. Pool status:
    <code>tqserver status</code>, or the admin endpoint.</p>
  </section>
  <section>
    <h2>Request environment</h2>
    <table>
      <?php foreach ($keys as $key): ?>
      <tr><th><?= $h($key) ?></th><td><?= isset($server[$key]) ? $h($server[$key]) : '<em>unset</em>' ?></td></tr>
      <?php endforeach; ?>
    </table>
  </section>
  <footer><a href="<?= $h(dirname($server['SCRIPT_NAME'])) ?>/hello.php">hello.php</a> ·
    <a href="<?= $h(dirname($server['SCRIPT_NAME'])) ?>/some/pretty/url?x=1">a pretty URL</a> (served by this front controller)</footer>
</body>
</html>
