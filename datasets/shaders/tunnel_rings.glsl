// A polar tunnel: texture coordinates (1/r, angle) give rings rushing to a vanishing point.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (fragCoord - iMouse.xy * 0.5 - 0.25 * iResolution.xy) / iResolution.y;
    float r = length(uv) + 1e-3;
    float a = atan(uv.y, uv.x) / 6.2831;
    vec2 t = vec2((0.3 + 0.7 * iParams[0].x) / r + iTime, a * floor(2.0 + 10.0 * iParams[0].y));
    float checker = mod(floor(t.x * 2.0) + floor(t.y * 4.0), 2.0);
    vec3 col = mix(kd_palette(0.2), kd_palette(0.7 + 0.3 * iParams[0].z), checker);
    fragColor = vec4(col * clamp(r * (2.0 + 3.0 * iParams[0].w), 0.0, 1.0), 1.0);
}
