<?php
define('PREPENDED', true);
